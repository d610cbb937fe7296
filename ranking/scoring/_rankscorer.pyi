"""Type stub for the rank-kernel C extension (ranking/scoring/_rankscorer.c).

Built by `ranking.scoring.rank_build.build_rank`; every array is copied and checked by the
constructor (ValueError on any length, offset, order or index that does not fit).
"""

import numpy as np
import numpy.typing as npt

#: Documents per pass (byte lanes of a 512-bit vector).
LANES: int
#: Most distinct thresholds a feature may have (ranks are bytes).
MAX_RANKS: int

class RankEnsemble:
    def __new__(
        cls,
        num_features: int,
        num_trees: int,
        num_outputs: int,
        average_output: bool,
        block_tree: npt.NDArray[np.int64],
        tree_vec: npt.NDArray[np.int64],
        thr_off: npt.NDArray[np.int64],
        thr: npt.NDArray[np.float64],
        scan_zero: npt.NDArray[np.uint8],
        seg_off: npt.NDArray[np.int64],
        rec_rank: npt.NDArray[np.uint8],
        rec_vec: npt.NDArray[np.uint32],
        rec_clear: npt.NDArray[np.uint8],
        nan_off: npt.NDArray[np.int64],
        nan_vec: npt.NDArray[np.uint32],
        nan_clear: npt.NDArray[np.uint8],
        zero_off: npt.NDArray[np.int64],
        zero_vec: npt.NDArray[np.uint32],
        zero_clear: npt.NDArray[np.uint8],
        cat_off: npt.NDArray[np.int64],
        cnode_rec: npt.NDArray[np.int64],
        cat_vec: npt.NDArray[np.uint32],
        cat_clear: npt.NDArray[np.uint8],
        cat_bits_off: npt.NDArray[np.int64],
        cat_bits: npt.NDArray[np.uint32],
        leaf_value: npt.NDArray[np.float64],
    ) -> RankEnsemble: ...
    @property
    def num_features(self) -> int: ...
    @property
    def num_trees(self) -> int: ...
    @property
    def num_outputs(self) -> int: ...
    @property
    def num_blocks(self) -> int: ...
    def predict(self, matrix: object, kernel: int = -1) -> npt.NDArray[np.float64]:
        """Raw scores (n, num_outputs) of a C-contiguous float64 matrix (n, num_features);
        ValueError for any other input or a kernel this CPU lacks. Releases the GIL."""

def available_kernels() -> dict[str, int]:
    """Rank kernels this CPU can run, name -> id ("rank-avx2": 0, "rank-avx512": 1); empty on
    CPUs with neither AVX2 nor AVX-512BW."""
