"""Training: checkpoints, resume, refusals, NaN handling, the CLIs end to end on `tiny`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deccm import metrics
from deccm.data import load_dataset
from deccm.models import ModelConfig, DecCMStudent
from deccm.models.erasure import erase
from deccm.runs import RunError, load_for_inference, read_config
from deccm.serve import load_ranker
from deccm.train import BLEND_GRID, VARIANTS, TrainConfig, TrainingError, train

FAST = TrainConfig(epochs=3, batch_size=64, seed=7, device="cpu")


@pytest.fixture(scope="module")
def teacher_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train("teacher", tiny_dataset, tmp_path_factory.mktemp("runs") / "teacher", ModelConfig.for_mode("fixed"), FAST)


def _states_equal(a: Path, b: Path) -> bool:
    sa = torch.load(a, weights_only=True, map_location="cpu")["model"]
    sb = torch.load(b, weights_only=True, map_location="cpu")["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_dir_has_config_and_checkpoints(teacher_run: Path, tiny_dataset: Path) -> None:
    conf = json.loads((teacher_run / "config.json").read_text())
    assert conf["kind"] == "teacher" and len(conf["history"]) == 3
    assert conf["data"]["synthetic"] is True and conf["data"]["manifest_hash"]
    assert conf["best_val"] == max(h["val"] for h in conf["history"])
    model, _ = load_for_inference(teacher_run)
    assert not model.training
    assert not [p for p in teacher_run.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_resume_equals_uninterrupted(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    cfg = ModelConfig.for_mode("fixed")
    full = train("student", tiny_dataset, tmp_path / "full", cfg, FAST, teacher=teacher_run)

    def crash_after_first(entry: dict) -> None:
        if entry["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("student", tiny_dataset, tmp_path / "cut", cfg, FAST, teacher=teacher_run, on_epoch_end=crash_after_first)
    assert json.loads((tmp_path / "cut/config.json").read_text())["history"][-1]["epoch"] == 0
    train("student", tiny_dataset, tmp_path / "cut", cfg, FAST, teacher=teacher_run, resume=True)
    assert _states_equal(full / "state.pt", tmp_path / "cut/state.pt")
    assert _states_equal(full / "best.pt", tmp_path / "cut/best.pt")


def test_student_refuses_teacher_of_other_data(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    from deccm.data.synth import synth

    other = synth(tmp_path / "other", preset="tiny", seed=5)
    with pytest.raises(RunError, match="teacher was trained on data .* Fix: python -m deccm.train teacher"):
        train("student", other, tmp_path / "s", ModelConfig.for_mode("fixed"), FAST, teacher=teacher_run)


def test_student_refuses_teacher_of_other_dims(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="latent_dim=128 but the student needs 64"):
        train("student", tiny_dataset, tmp_path / "s", ModelConfig.for_mode("fixed", latent_dim=64), FAST, teacher=teacher_run)


def test_student_refuses_a_student_as_teacher(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    s = train("student", tiny_dataset, tmp_path / "s", ModelConfig.for_mode("fixed", distill="off"), FAST.__class__(epochs=1, batch_size=64))
    with pytest.raises(RunError, match="not a teacher"):
        train("student", tiny_dataset, tmp_path / "s2", ModelConfig.for_mode("fixed"), FAST, teacher=s)


def test_nan_loss_in_epoch_2_stops_and_keeps_epoch_1(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig.for_mode("fixed", distill="off")
    tcfg = TrainConfig(epochs=3, batch_size=64, seed=3, device="cpu")
    one = train("student", tiny_dataset, tmp_path / "one", cfg, TrainConfig(epochs=1, batch_size=64, seed=3, device="cpu"))
    real = DecCMStudent.loss
    steps = [0]
    per_epoch = -(-400 // 64)  # the tiny preset has 400 training rows

    def poisoned(self, *args, **kwargs):
        loss, parts = real(self, *args, **kwargs)
        steps[0] += 1
        return (loss * float("nan"), parts) if steps[0] == per_epoch + 2 else (loss, parts)

    monkeypatch.setattr(DecCMStudent, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2, step 2/7 .* last good epoch \(1\) is kept"):
        train("student", tiny_dataset, tmp_path / "r", cfg, tcfg)
    conf = read_config(tmp_path / "r")
    assert len(conf.history) == 1 and not conf.finished
    assert _states_equal(tmp_path / "r/best.pt", one / "best.pt")  # exactly the weights after epoch 1
    monkeypatch.setattr(DecCMStudent, "loss", real)
    train("student", tiny_dataset, tmp_path / "r", cfg, tcfg, resume=True)  # and the run resumes from there
    assert len(read_config(tmp_path / "r").history) == 3


def test_tiny_dataset_errors_are_clear(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="batch size 1 < 2"):
        train("teacher", tiny_dataset, tmp_path / "t", ModelConfig.for_mode("fixed"), TrainConfig(epochs=1, batch_size=1, device="cpu"))
    with pytest.raises(RunError, match="already holds a run"):
        (tmp_path / "t2").mkdir()
        (tmp_path / "t2" / "config.json").write_text("{}")
        train("teacher", tiny_dataset, tmp_path / "t2", ModelConfig.for_mode("fixed"), FAST)


def test_faithful_mode_config_has_authors_settings() -> None:
    cfg = ModelConfig.for_mode("faithful")
    assert (cfg.hinge, cfg.distill, cfg.distill_weight, cfg.confounder, cfg.fusion, cfg.mask_same_track) == (
        "faithful", "faithful", 5e-5, "batch-mean", "linear", False)
    assert TrainConfig().learning_rate("teacher") == 1e-4 and TrainConfig().learning_rate("student") == 1e-3


@pytest.mark.slow
def test_cli_train_and_evaluate_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text("[train]\nepochs = 2\nbatch_size = 64\nseed = 3\n[model]\nlatent_dim = 32\n")
    t = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "deccm.train", "teacher", "--data", str(tiny_dataset), "--out", str(t),
                        "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "best epoch" in r.stdout
    s = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "deccm.train", "student", "--data", str(tiny_dataset), "--out", str(s),
                        "--teacher", str(t), "--config", str(cfg), "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    conf = json.loads((s / "config.json").read_text())
    assert conf["train"]["epochs"] == 1 and conf["model"]["latent_dim"] == 32  # flags win over the file
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "deccm.evaluate", str(s), "--compare", "popularity", "--out", str(out),
                        "--bootstrap", "50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "SYNTHETIC" in r.stdout and "HR_w@10" in r.stdout and "popularity:test_oracle" in r.stdout
    payload = json.loads(out.read_text())
    res = payload["models"]["s"]["splits"]["test"]
    assert 0.0 <= res["HR_w@10"]["value"] <= 1.0
    lo, hi = res["HR@10"]["ci95"]
    assert lo <= res["HR@10"]["value"] <= hi
    assert set(payload["models"]) == {"s", "popularity"}
    r = subprocess.run([sys.executable, "-m", "deccm.train", "student", "--data", str(tiny_dataset), "--out", str(s)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_feature_specs_must_match() -> None:
    from deccm.runs import check_feature_specs

    spec = {"kind": "video", "name": "efficientnet-lite0", "version": 1, "dims": 1280, "weights": "untrained"}
    other = {**spec, "name": "resnet50", "dims": 2048}
    check_feature_specs({"video": spec}, {"video": dict(spec)}, "a", "b")
    check_feature_specs(None, None, "a", "b")  # synthetic data has no extractor
    with pytest.raises(RunError, match="video: a features .* extracted differently"):
        check_feature_specs({"video": spec}, {"video": other}, "a", "b")
    with pytest.raises(RunError, match="only one side"):
        check_feature_specs({"video": spec}, None, "a", "b")


@pytest.mark.slow
def test_validation_score_is_evaluates_number(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    from deccm.evaluate import evaluate

    run = train("student", tiny_dataset, tmp_path / "s", ModelConfig.for_mode("fixed"), FAST, teacher=teacher_run)
    conf = read_config(run)
    results, _ = evaluate([str(run)], splits=["val"], n_boot=0, device="cpu")
    assert results[0].values[f"HR_w@{conf.train.eval_k}"] == pytest.approx(conf.best_val, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("kind,lr", [("teacher", "0.0001"), ("student", "0.001")])
def test_cli_help_shows_real_defaults(kind: str, lr: str) -> None:
    r = subprocess.run([sys.executable, "-m", "deccm.train", kind, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert f"learning rate (default: {lr})" in text and "default None" not in text and "(default: 50)" in text
    assert ("--teacher" in text and "--variant" in text) == (kind == "student")


def test_training_and_evaluation_need_no_media_libraries() -> None:
    """Training, evaluation and spec checks import no decoder or extractor (a GPU box may lack PyAV, librosa, openSMILE)."""
    code = ("import sys, deccm.train, deccm.evaluate, deccm.data.synth; from deccm.runs import check_feature_specs; "
            "check_feature_specs({'video': None}, {'video': None}, 'a', 'b'); "
            "print(sorted(m for m in ('av', 'librosa', 'opensmile', 'torchvision') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_erasing_beyond_content_without_erasure_is_refused_with_the_fix(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="erase_residual.*Fix"):
        train("student", tiny_dataset, tmp_path / "r", ModelConfig.for_mode("fixed", distill="off", erase_residual=True),
              TrainConfig(epochs=1, device="cpu"), variant="custom")


def test_blend_weights_are_chosen_on_pgc_val_and_served(tiny_dataset: Path, teacher_run: Path, tmp_path: Path) -> None:
    """A finished blend carries the (student, ridge) weights with the best PGC-val Recall@10 of the grid; the served
    vectors use them; a checkpoint from before the choice loads with equal say."""
    out = train("student", tiny_dataset, tmp_path / "blend", ModelConfig.for_mode("fixed", **VARIANTS["blend"]), FAST,
                teacher=teacher_run, variant="blend")
    conf = read_config(out)
    chosen = tuple(conf.blend["weights"])
    assert chosen in BLEND_GRID and conf.blend["chosen_on"] == "PGC val Recall@10"
    ds = load_dataset(tiny_dataset)
    model, _ = load_for_inference(out)
    assert tuple(model.blend.tolist()) == chosen
    p = ds.pgc
    recall = {}
    for ab in BLEND_GRID:  # recomputed from the served model: the choice is the best of the grid
        model.blend.copy_(torch.tensor(ab))
        q = model.video_embed(torch.as_tensor(p.segment_features[p.val.segment])) @ model.music_embed(torch.as_tensor(p.music_features)).T
        recall[ab] = metrics.recall_at_k(metrics.catalog_rank(q.numpy(), p.val.music), 10)
    assert recall[chosen] == max(recall.values()) == pytest.approx(conf.blend["pgc_val_recall"][f"{chosen[0]:g}:{chosen[1]:g}"])
    served = load_ranker(out)
    x = p.segment_features[p.val.segment][:4]
    model.blend.copy_(torch.tensor(chosen))
    assert torch.allclose(torch.as_tensor(served.video_vectors(x)), model.video_embed(torch.as_tensor(x)), atol=1e-6)
    # the ridge part erases all of the taste (the student part only the taste beyond content): no linear trace of the
    # training rows' uploader priors is left in its vectors before they are normalised
    t = ds.ugc.train
    r = model.ridge
    raw = ((torch.as_tensor(ds.ugc.video_features[t.video]) - r.x_mean) / r.x_std) @ r.weight
    z = torch.as_tensor(t.prior, dtype=torch.float32)

    def taste_cov(v: torch.Tensor) -> float:
        return ((v - v.mean(0)).T @ (z - z.mean(0)) / len(v)).abs().max().item()

    assert model.cfg.erase_residual and not r.cfg.erase_residual
    assert taste_cov(erase(raw, r.erase_mean, r.erase_map)) < 1e-3 * taste_cov(raw)
    old = tmp_path / "older"  # a blend saved before the choice existed loads with equal say
    shutil.copytree(out, old)
    ckpt = torch.load(old / "best.pt", weights_only=True, map_location="cpu")
    del ckpt["model"]["blend"]
    torch.save(ckpt, old / "best.pt")
    assert load_for_inference(old)[0].blend.tolist() == [1.0, 1.0]
