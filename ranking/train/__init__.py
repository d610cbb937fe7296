"""`ranking train`: a LambdaRank model bundle from a file of judged query results.

Three jobs, one module each: `data` reads LETOR / libsvm, CSV and Parquet training files into
`RankingData` (tables through `ranking.tables`, the project's one table reader); `ndcg`
computes NDCG@k as LightGBM does; `lambdarank` trains with one `TrainParams` and writes the
bundle. The names below are the package's interface (`from ranking.train import ...`).
"""

from ranking.train.data import MAX_LABEL, RankingData, TrainDataError, load_ranking_data
from ranking.train.lambdarank import (
    DEFAULT_SOURCES,
    TqdmCallback,
    TrainParams,
    TrainReport,
    train_command,
)
from ranking.train.ndcg import ndcg_at_k

__all__ = [
    "DEFAULT_SOURCES",
    "MAX_LABEL",
    "RankingData",
    "TqdmCallback",
    "TrainDataError",
    "TrainParams",
    "TrainReport",
    "load_ranking_data",
    "ndcg_at_k",
    "train_command",
]
