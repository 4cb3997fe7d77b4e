"""The registered student as an MLflow pyfunc model.

Logged "from code": MLflow stores this file with the model and runs it when the model is
loaded, so loading unpickles nothing. The ``deccm`` package travels with the model
(``code_paths``), so it loads where deccm is not installed, with only the serving
requirements of ``deccm.registry.serving_requirements`` (docs/architecture.md, "The
deployable model"). The model's one artifact is a serving bundle
(``deccm.serve.Recommender.save_bundle``: run config and best weights, catalog vectors,
track rows and their audio); ``predict`` ranks that catalog for all input rows at once.

Input: a DataFrame with a ``features`` column (each clip's video features, a list of
floats, as ``deccm.features`` extracts them). Media files are not accepted: decoding an
upload needs the media admission rules and the extractor's weights, which the demo and
``deccm recommend`` own, and a model server must not open paths its clients name. Param
``k`` (default 10). Output: one row per input row with ``track_ids`` and ``scores`` (best
first).
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class StudentModel(PythonModel):
    def load_context(self, context):  # noqa: ANN001 - MLflow inspects type hints; none keeps it from guessing a schema
        from deccm.serve import Recommender

        self.rec = Recommender.from_bundle(context.artifacts["bundle"], device="auto", extractor=False)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - the signature is logged explicitly
        k = int((params or {}).get("k", 10))
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "features" not in df.columns:
            raise ValueError(f"the input needs a 'features' column (each row a list of {self.rec.run.model.video_dim} floats); "
                             f"got columns {list(df.columns)}")
        rows = df["features"].tolist()
        bad = [i for i, f in enumerate(rows) if f is None or np.ndim(f) != 1]
        if bad:
            raise ValueError(f"input rows {bad[:5]} have no 'features' list (each row needs a list of "
                             f"{self.rec.run.model.video_dim} floats)")
        if not rows:
            return pd.DataFrame({"track_ids": [], "scores": []})
        x = np.stack([np.asarray(f, dtype=np.float32) for f in rows])
        ids, scores = self.rec.rank_features(x, k)  # one ranking call for every row
        return pd.DataFrame({"track_ids": ids.astype(np.int64).tolist(), "scores": scores.astype(np.float64).tolist()},
                            columns=["track_ids", "scores"])


mlflow.models.set_model(StudentModel())
