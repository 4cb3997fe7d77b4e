"""The registered student as an MLflow pyfunc model.

Logged "from code": MLflow stores this file with the model and runs it when the model is
loaded, so loading unpickles nothing. The model's one artifact is a serving bundle
(``deccm.serve.Recommender.save_bundle``: run config and best weights, catalog vectors and
track rows); ``predict`` ranks that catalog for each input row.

Input: a DataFrame with a ``features`` column (the clip's video features, a list of
floats) or a ``video`` column (a media file path, extracted with the run's recorded
extractor). Param ``k`` (default 10). Output: one row per input row with ``track_ids``
and ``scores`` (best first).
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class StudentModel(PythonModel):
    def load_context(self, context):  # noqa: ANN001 - MLflow inspects type hints; none keeps it from guessing a schema
        from deccm.serve import Recommender

        self.rec = Recommender.from_bundle(context.artifacts["bundle"], device="auto")

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - the signature is logged explicitly
        k = int((params or {}).get("k", 10))
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        rows = []
        for _, row in df.iterrows():
            video = row.get("video")
            feats = row.get("features")
            if isinstance(video, str) and video:
                x = self.rec.video_features(video)
            elif feats is not None and not (isinstance(feats, float) and np.isnan(feats)):
                x = np.asarray(feats, dtype=np.float32)[None, :]
            else:
                raise ValueError("each input row needs 'features' (list of floats) or 'video' (a media file path)")
            ids, scores = self.rec.rank_features(x, k)
            rows.append({"track_ids": [int(i) for i in ids[0]], "scores": [float(s) for s in scores[0]]})
        return pd.DataFrame(rows, columns=["track_ids", "scores"])


mlflow.models.set_model(StudentModel())
