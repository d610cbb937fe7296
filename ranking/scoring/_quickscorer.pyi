"""Type stub for the QuickScorer C extension (ranking/scoring/_quickscorer.c)."""

import numpy as np
import numpy.typing as npt

KERNEL_AUTO: int
KERNEL_SCALAR: int
KERNEL_SSE2: int
KERNEL_AVX2: int
KERNEL_AVX512: int

class Ensemble:
    def __new__(
        cls,
        num_features: int,
        num_trees: int,
        num_outputs: int,
        words: int,
        average_output: bool,
        num_off: npt.NDArray[np.int64],
        num_thr: npt.NDArray[np.float64],
        num_tree: npt.NDArray[np.uint32],
        num_mask: npt.NDArray[np.uint64],
        nan_off: npt.NDArray[np.int64],
        nan_tree: npt.NDArray[np.uint32],
        nan_mask: npt.NDArray[np.uint64],
        zero_off: npt.NDArray[np.int64],
        zero_tree: npt.NDArray[np.uint32],
        zero_mask: npt.NDArray[np.uint64],
        cat_off: npt.NDArray[np.int64],
        cat_tree: npt.NDArray[np.uint32],
        cat_mask: npt.NDArray[np.uint64],
        cat_bits_off: npt.NDArray[np.int64],
        cat_bits: npt.NDArray[np.uint32],
        leaf_value: npt.NDArray[np.float64],
        scan_zero: npt.NDArray[np.uint8],
    ) -> Ensemble: ...
    @property
    def num_features(self) -> int: ...
    @property
    def num_trees(self) -> int: ...
    @property
    def num_outputs(self) -> int: ...
    @property
    def words(self) -> int: ...
    def predict(self, matrix: object, kernel: int = -1) -> npt.NDArray[np.float64]: ...

def available_kernels() -> dict[str, int]: ...
def auto_kernel() -> str: ...
