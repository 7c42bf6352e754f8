"""Step-level batching: an image depends only on its own seed, plan, label and guidance."""

from pathlib import Path

import numpy as np
import pytest
import torch

from model import RowSpec, load_checkpoint


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    return load_checkpoint(tiny_checkpoint, device="cpu")


def solo(model, spec: RowSpec) -> np.ndarray:  # type: ignore[no-untyped-def]
    batch = model.row_batch(1)
    batch.add(spec)
    while True:
        done = batch.step()
        if done:
            return done[0].image


def test_image_i_of_seed_s_is_image_0_of_seed_s_plus_i(tiny) -> None:  # type: ignore[no-untyped-def]
    many = tiny.sample(5, seed=100, sampler="ddpm", steps=12, label=3)
    for i in (1, 4):
        one = tiny.sample(1, seed=100 + i, sampler="ddpm", steps=12, label=3)
        np.testing.assert_array_equal(many[i], one[0])
    assert not np.array_equal(many[0], many[1])


def test_batch_size_does_not_change_images(tiny) -> None:  # type: ignore[no-untyped-def]
    a = tiny.sample(6, seed=7, sampler="ddpm", steps=20, batch_size=6)
    b = tiny.sample(6, seed=7, sampler="ddpm", steps=20, batch_size=4)  # two waves, rows join mid-run
    np.testing.assert_array_equal(a, b)


def test_rows_with_different_plans_share_a_batch(tiny) -> None:  # type: ignore[no-untyped-def]
    """Rows of every sampler, step count, label and guidance, joining at different steps, give
    the same images as each run alone."""
    specs = [
        RowSpec(tiny.plan("ddpm", 30), seed=1, label=2, guidance=0.0),
        RowSpec(tiny.plan("ddim", 7), seed=2, label=None, guidance=0.0),
        RowSpec(tiny.plan("ddim", 11, eta=1.0), seed=3, label=5, guidance=2.0),
        RowSpec(tiny.plan("dpmpp_2m", 9), seed=4, label=9, guidance=1.5),
        RowSpec(tiny.plan("dpmpp_2m", 3), seed=5, label=0, guidance=0.0),
    ]
    expected = [solo(tiny, s) for s in specs]
    batch = tiny.row_batch(4)
    got: dict[int, np.ndarray] = {}
    pending = list(enumerate(specs))
    while pending or len(batch):
        if pending and batch.free and (len(batch) == 0 or len(pending) % 2):  # stagger the arrivals
            i, spec = pending.pop(0)
            batch.add(spec, tag=i)
        for row in batch.step():
            got[row.tag] = row.image
    assert sorted(got) == list(range(len(specs)))
    for i, image in enumerate(expected):
        # Matmul blocking can change with the batch size; allow one grey level, no more.
        diff = np.abs(got[i].astype(int) - image.astype(int))
        assert diff.max() <= 1, (i, diff.max())


def test_guidance_changes_conditional_images_only(tiny) -> None:  # type: ignore[no-untyped-def]
    plain = tiny.sample(2, seed=3, steps=8, label=4, guidance=0.0)
    guided = tiny.sample(2, seed=3, steps=8, label=4, guidance=3.0)
    assert not np.array_equal(plain, guided)
    # an unconditional row ignores guidance: there is no class to guide towards
    np.testing.assert_array_equal(tiny.sample(2, seed=3, steps=8, guidance=0.0),
                                  tiny.sample(2, seed=3, steps=8, guidance=3.0))


def test_removed_rows_leave_and_the_rest_finish(tiny) -> None:  # type: ignore[no-untyped-def]
    batch = tiny.row_batch(3)
    keep = RowSpec(tiny.plan("ddim", 6), seed=11)
    rows = [batch.add(RowSpec(tiny.plan("ddpm", 40), seed=s)) for s in (1, 2)]
    kept = batch.add(keep)
    batch.step()
    batch.remove(rows[0])
    assert len(batch) == 2 and rows[0].slot == -1 and batch.free == 1
    finished = []
    while len(batch):
        finished += batch.step()
        if kept.done:
            batch.remove(rows[1])
    assert finished == [kept]
    np.testing.assert_array_equal(kept.image, solo(tiny, keep))


def test_preview_is_the_current_x0_prediction(tiny) -> None:  # type: ignore[no-untyped-def]
    """After the first step the preview is the network's x0 from x_T: (x_T - sqrt(1 - abar) eps) / sqrt(abar)
    (eq. 15, clipped), not x_t and not the sample."""
    from model.images import to_uint8

    plan = tiny.plan("ddim", 5)
    batch = tiny.row_batch(2)
    row = batch.add(RowSpec(plan, seed=0, label=1))
    x_T = torch.randn(tiny.image_shape, generator=torch.Generator().manual_seed(0))[None]
    t = plan.timesteps[:1]
    eps = tiny.denoiser(x_T, t, torch.tensor([1]))
    abar = tiny.schedule.sqrt_alphas_cumprod[t].double() ** 2
    x0 = ((x_T.double() - (1 - abar).sqrt() * eps.double()) / abar.sqrt()).clamp(-1, 1)
    batch.step()
    preview = batch.preview([row])
    assert preview.shape == (1, 8, 8, 1) and preview.dtype == np.uint8
    expected = to_uint8(x0).numpy()
    assert np.abs(preview.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(preview, batch.noisy([row]))  # x_t after the step is something else


def test_bad_requests_are_refused(tiny, tiny_uncond_checkpoint: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="label=10"):
        tiny.sample(1, label=10)
    with pytest.raises(ValueError, match="n=0"):
        tiny.sample(0)
    with pytest.raises(ValueError, match="guidance"):
        tiny.sample(1, guidance=-1.0)
    with pytest.raises(ValueError, match="seed"):
        tiny.sample(2, seed=2**63 - 1)
    uncond = load_checkpoint(tiny_uncond_checkpoint, device="cpu")
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(1, label=1)
    batch = tiny.row_batch(1)
    batch.add(RowSpec(tiny.plan("ddim", 3), seed=0))
    with pytest.raises(RuntimeError, match="full"):
        batch.add(RowSpec(tiny.plan("ddim", 3), seed=1))


def test_unconditional_model_samples(tiny_uncond_checkpoint: Path) -> None:
    model = load_checkpoint(tiny_uncond_checkpoint, device="cpu")
    images = model.sample(3, steps=5, sampler="ddpm", seed=1)
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert len(np.unique(images)) > 10  # not a constant image


def test_sampling_is_deterministic_across_calls(tiny) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(123)  # global RNG state must not matter
    a = tiny.sample(2, seed=9, sampler="ddim", eta=0.7, steps=10)
    torch.manual_seed(456)
    b = tiny.sample(2, seed=9, sampler="ddim", eta=0.7, steps=10)
    np.testing.assert_array_equal(a, b)
