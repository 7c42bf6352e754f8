"""Editing rows (a start image, a known part and a mask, jumps) in RowBatch, on the tiny model.

The proofs on the embedded digits model are in test_editing_digits.py.
"""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import RePaintScheduler

from model import RowSpec, load_checkpoint
from model.batch import Known, Start
from model.editing import (
    EditError,
    blend_frames,
    edit_specs,
    inpaint_spec,
    interpolation_specs,
    repaint_moves,
    run_rows,
    run_variations,
    sdedit_spec,
    shared_start,
    variation_plans,
    variation_prefix_spec,
    variation_specs,
)
from model.images import to_uint8
from model.samplers import DATA, SQRT_1M_AB, SQRT_AB

from .train_utils import one_thread


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path):  # type: ignore[no-untyped-def]
    with one_thread():
        yield load_checkpoint(tiny_checkpoint, device="cpu")


def image(seed: int) -> torch.Tensor:
    """A (1, 8, 8) image in [-1, 1] on the uint8 grid, as an upload would be."""
    u8 = torch.randint(0, 256, (1, 8, 8), generator=torch.Generator().manual_seed(seed))
    return u8.float() / 127.5 - 1.0


def as_u8(x: torch.Tensor) -> np.ndarray:
    return to_uint8(x[None])[0].numpy()


TOP = torch.zeros(1, 8, 8)
TOP[:, :4] = 1.0  # regenerate the top half, keep the bottom


def mixed_specs(tiny) -> list[RowSpec]:  # type: ignore[no-untyped-def]
    """Every kind of edit row beside plain rows of every sampler, with and without guidance."""
    prefix_plan, cont = variation_plans(tiny, t=50, steps=10, sampler="ddpm")
    assert prefix_plan is not None and cont is not None
    xt = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(99))
    return [
        inpaint_spec(tiny, image(1), TOP, seed=1, label=3, jumps=2, jump_length=2, steps=8, sampler="ddpm"),
        RowSpec(tiny.plan("ddim", 7), seed=2),
        sdedit_spec(tiny, image(2), strength=0.5, seed=3, label=8, guidance=1.5, steps=6, sampler="dpmpp_2m"),
        inpaint_spec(tiny, image(3), 1 - TOP, seed=4, steps=5, sampler="ddim", eta=0.0, guidance=2.0, label=1),
        RowSpec(tiny.plan("dpmpp_2m", 9), seed=5, label=9, guidance=1.5),
        *interpolation_specs(tiny, image(4), image(5), t=40, frames=3, seed=6, steps=5),
        variation_prefix_spec(prefix_plan, seed=7, label=2),
        *variation_specs(cont, xt, [8, 9], label=2),
        RowSpec(tiny.plan("ddpm", 12), seed=10, label=0),
    ]


def test_edit_rows_share_batches_with_plain_rows_byte_for_byte(tiny) -> None:  # type: ignore[no-untyped-def]
    """Each row's image is the same alone and mixed into a batch of 3 with rows of other kinds,
    samplers, lengths and guidance, joining at different steps (a prefix row's latent too)."""
    specs = mixed_specs(tiny)
    alone = [run_rows(tiny, [spec])[0] for spec in specs]
    batch = tiny.row_batch(3, max_steps=max(s.plan.steps for s in specs))
    mixed: dict[int, np.ndarray] = {}
    latents: dict[int, torch.Tensor] = {}
    pending = list(enumerate(specs))
    sizes = []
    while pending or len(batch):
        if pending and batch.free:  # one arrival per step: rows join part-way through others
            i, spec = pending.pop(0)
            batch.add(spec, tag=i)
        sizes.append(len(batch))
        for row in batch.step():
            mixed[row.tag] = row.image
            if row.latent is not None:
                latents[row.tag] = row.latent
    assert max(sizes) == 3
    for i, row in enumerate(alone):
        np.testing.assert_array_equal(mixed[i], row.image, err_msg=f"row {i}")
    prefix = next(i for i, s in enumerate(specs) if s.latent_out is not None)
    assert list(latents) == [prefix] and alone[prefix].latent is not None
    # The float latent agrees to rounding only: the network's float sums depend on the batch size
    # (matmul blocking), which the uint8 images above absorb.
    torch.testing.assert_close(latents[prefix], alone[prefix].latent, atol=1e-5, rtol=0)


def test_inpainting_keeps_the_known_pixels_exactly(tiny) -> None:  # type: ignore[no-untyped-def]
    source = image(11)
    for sampler, jumps in (("ddpm", 0), ("ddim", 3), ("dpmpp_2m", 1)):
        rows = run_rows(tiny, [inpaint_spec(tiny, source, TOP, seed=s, jumps=jumps, jump_length=2, steps=6,
                                            sampler=sampler, label=4) for s in (1, 2)])
        for row in rows:
            assert row.image is not None
            np.testing.assert_array_equal(row.image[4:], as_u8(source)[4:])
        assert not np.array_equal(rows[0].image[:4], rows[1].image[:4])  # the masked half is generated
        assert not np.array_equal(rows[0].image[:4], as_u8(source)[:4])


def test_a_start_image_is_encoded_with_the_rows_first_draw(tiny) -> None:  # type: ignore[no-untyped-def]
    """SDEdit's x_t0 = sqrt(abar) x0 + sqrt(1 - abar) z (eq. 4), z the first draw of the row's seed,
    the draw a plain row would take as its x_T; a given x_t0 is taken as it is."""
    spec = sdedit_spec(tiny, image(1), strength=0.3, seed=42)
    assert spec.plan.timesteps[0] == 29  # the paper's t = 0.3 * 100 is index 29
    batch = tiny.row_batch(2)
    row = batch.add(spec)
    z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(42))
    c = spec.plan.coefs[0]
    np.testing.assert_array_equal(batch.noisy([row])[0], as_u8(c[SQRT_AB] * image(1) + c[SQRT_1M_AB] * z))
    given = batch.add(RowSpec(spec.plan, seed=1, start=Start(image(2) * 0.5, encode=False)))
    np.testing.assert_array_equal(batch.noisy([given])[0], as_u8(image(2) * 0.5))


def test_masked_rows_draw_known_noise_after_their_step_noise(tiny) -> None:  # type: ignore[no-untyped-def]
    """A mask of all ones regenerates everything: the row is then a plain SDEdit row from the same
    start, except for its extra draws. With a deterministic sampler there are no step draws, so
    the extra known-noise draws change nothing and the images agree exactly."""
    spec = sdedit_spec(tiny, image(5), strength=0.6, seed=3, steps=5, sampler="ddim", eta=0.0)
    all_ones = RowSpec(spec.plan, seed=3, start=spec.start, known=Known(image(5), torch.ones(1, 8, 8)))
    a, b = (run_rows(tiny, [s])[0].image for s in (spec, all_ones))
    np.testing.assert_array_equal(a, b)


def test_repaint_schedule_is_diffusers_and_the_papers() -> None:
    """Our moves visit the states of RePaint's ``get_schedule_jump`` (diffusers' RePaintScheduler
    lists the same positions), with each run of upward positions as one forward jump."""
    for steps, jump_length, jump_n_sample in ((50, 10, 10), (25, 5, 3), (12, 4, 2), (20, 10, 1)):
        ref = RePaintScheduler(num_train_timesteps=1000)
        ref.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
        ratio = 1000 // steps
        states = [*(ref.timesteps.numpy() // ratio).tolist(), -1]
        grid = np.arange(steps) * ratio  # the timestep of each position (leading spacing, as diffusers)
        expected: list[tuple[int, int]] = []
        for a, b in itertools.pairwise(states):
            to = int(grid[b]) if b >= 0 else DATA
            if b > a and expected and expected[-1][1] > expected[-1][0]:
                expected[-1] = (expected[-1][0], to)  # merge consecutive upward steps into one jump
            else:
                expected.append((int(grid[a]), to))
        got = repaint_moves(grid[::-1], jump_n_sample - 1, jump_length)
        assert got.tolist() == [list(m) for m in expected], (steps, jump_length, jump_n_sample)
    assert repaint_moves(np.array([9, 5, 2]), 0, 10).tolist() == [[9, 5], [5, 2], [2, DATA]]


def test_interpolation_at_t0_is_the_exact_blend() -> None:
    a, b = image(1), image(2)
    frames = blend_frames(a, b, 5)
    np.testing.assert_array_equal(frames[0], as_u8(a))
    np.testing.assert_array_equal(frames[-1], as_u8(b))
    np.testing.assert_array_equal(frames[2], as_u8(0.5 * a + 0.5 * b))


def test_interpolation_frames_share_the_encoders_noise(tiny) -> None:  # type: ignore[no-untyped-def]
    """The mixed latent (1 - lam) x_t^a + lam x_t^b with shared noise (sec. 4.3) is the blend encoded
    with that noise: a row's start, by linearity of eq. 4."""
    a, b = image(1), image(2)
    specs = interpolation_specs(tiny, a, b, t=60, frames=5, seed=8, steps=4)
    assert len({s.seed for s in specs}) == 1
    c = specs[0].plan.coefs[0]
    z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(8))
    xa, xb = c[SQRT_AB] * a + c[SQRT_1M_AB] * z, c[SQRT_AB] * b + c[SQRT_1M_AB] * z
    batch = tiny.row_batch(5)
    rows = [batch.add(s) for s in specs]
    for lam, got in zip(np.linspace(0, 1, 5), batch.noisy(rows), strict=True):
        want = as_u8((1 - lam) * xa + lam * xb)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float rounding of the two routes


def test_variations_split_one_chain_at_t(tiny) -> None:  # type: ignore[no-untyped-def]
    full = tiny.plan("ddpm", 10)
    prefix, cont = variation_plans(tiny, t=50, steps=10, sampler="ddpm")
    assert prefix is not None and cont is not None
    ts = full.timesteps.tolist()
    assert prefix.timesteps.tolist() + cont.timesteps.tolist() == ts
    assert prefix.targets[-1] == cont.timesteps[0] <= 49 < prefix.timesteps[-1]
    # t = 0 shares the whole chain: every variation is the seed's own sample
    same = run_variations(tiny, t=0, seed=5, n=3, steps=10, label=2)
    np.testing.assert_array_equal(same, np.repeat(tiny.sample(1, seed=5, steps=10, sampler="ddpm", label=2), 3, 0))
    # t = T shares x_T only, drawn as the seed's plain row would draw it
    none, everything = variation_plans(tiny, t=100, steps=10, sampler="ddpm")
    assert none is None and everything is not None and everything.steps == 10
    z = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shared_start(tiny, None, 5), z)
    varied = run_variations(tiny, t=100, seed=5, n=3, steps=10, label=2)
    assert len({v.tobytes() for v in varied}) == 3


def test_an_edit_request_is_n_rows_seeded_like_generate(tiny) -> None:  # type: ignore[no-untyped-def]
    """Without a mask SDEdit at strength 0.5 by default, with one RePaint from t = T; image i uses
    seed + i, so it equals image 0 of seed + i."""
    plain = edit_specs(tiny, image(1), None, n=3, seed=20, label=5, steps=4)
    assert [s.seed for s in plain] == [20, 21, 22] and all(s.known is None for s in plain)
    assert plain[0].plan.timesteps[0] == 49  # t = 0.5 * 100
    masked = edit_specs(tiny, image(1), TOP, n=2, seed=20, steps=4, jumps=1, jump_length=2)
    assert masked[0].known is not None and masked[0].plan.timesteps[0] == 99
    assert (np.diff(masked[0].plan.timesteps.numpy()) > 0).any()  # the jumps are in the plan
    images = [r.image for r in run_rows(tiny, plain)]
    again = run_rows(tiny, edit_specs(tiny, image(1), None, n=1, seed=22, label=5, steps=4))[0].image
    np.testing.assert_array_equal(images[2], again)
    with pytest.raises(EditError, match="^jumps: .*need a mask"):
        edit_specs(tiny, image(1), None, n=1, seed=0, jumps=2)
    with pytest.raises(EditError, match="^n: "):
        edit_specs(tiny, image(1), None, n=0, seed=0)


def test_bad_edit_requests_name_their_field(tiny) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ("strength", lambda: sdedit_spec(tiny, image(1), strength=0.0, seed=0)),
        ("strength", lambda: inpaint_spec(tiny, image(1), TOP, strength=1.5, seed=0)),
        ("image", lambda: sdedit_spec(tiny, torch.zeros(3, 8, 8), strength=0.5, seed=0)),
        ("mask", lambda: inpaint_spec(tiny, image(1), torch.ones(1, 4, 4), seed=0)),
        ("jumps", lambda: inpaint_spec(tiny, image(1), TOP, seed=0, jumps=-1)),
        ("t", lambda: interpolation_specs(tiny, image(1), image(2), t=0, frames=3, seed=0)),
        ("t", lambda: variation_plans(tiny, t=101)),
        ("frames", lambda: interpolation_specs(tiny, image(1), image(2), t=10, frames=1, seed=0)),
        ("sampler", lambda: variation_plans(tiny, t=50, sampler="ddim", eta=0.0)),
        ("sampler", lambda: sdedit_spec(tiny, image(1), strength=0.5, seed=0, sampler="euler")),
        ("steps", lambda: sdedit_spec(tiny, image(1), strength=0.5, seed=0, steps=-3)),
    ]
    for field, call in cases:
        with pytest.raises(EditError, match=f"^{field}: ") as err:
            call()
        assert err.value.field == field
    batch = tiny.row_batch(1)
    with pytest.raises(ValueError, match="known.mask values must be in"):
        batch.add(RowSpec(tiny.plan("ddim", 3), seed=0, known=Known(image(1), TOP * 2)))
    with pytest.raises(ValueError, match="start.image has shape"):
        batch.add(RowSpec(tiny.plan("ddim", 3), seed=0, start=Start(torch.zeros(1, 4, 4))))
    assert len(batch) == 0
