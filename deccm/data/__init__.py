"""The data layer: native format, validation, legacy import and the synthetic benchmark."""
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
