"""The data layer: native format, validation, legacy import, the synthetic benchmark, the demo
corpus and user data (``deccm.data.assemble``: feature stores + usage logs → dataset), all
sharing one row protocol (``deccm.data.protocol``: priors, propensities, weights, negatives)."""
from deccm.data.format import (
    PGC,
    UGC,
    Dataset,
    DatasetError,
    PairRows,
    RankRows,
    TrainRows,
    Truth,
    read_dataset,
    write_dataset,
)
from deccm.data.validate import load_dataset

__all__ = [
    "PGC", "UGC", "Dataset", "DatasetError", "PairRows", "RankRows", "TrainRows", "Truth",
    "load_dataset", "read_dataset", "write_dataset",
]
