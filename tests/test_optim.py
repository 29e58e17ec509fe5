"""SGD + AGC + weight decay and the learning-rate schedules."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from big_transfer_med import config_lib
from big_transfer_med import optim
from input_pipeline import errors


def _unit_norms(x):
  return np.sqrt(np.sum(np.square(x), axis=(0, 1, 2)))


def test_agc_clips_each_unit_and_leaves_head_alone():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  params = {"conv": {"kernel": jnp.asarray(kernel)},
            "head": {"kernel": jnp.ones((6, 3)), "bias": jnp.ones(3)}}
  grad_kernel = kernel * 0.001  # Small relative to the weights: kept.
  grad_kernel[..., 2] = kernel[..., 2] * 5.0  # Unit 2: far too large.
  grads = {"conv": {"kernel": jnp.asarray(grad_kernel)},
           "head": {"kernel": jnp.full((6, 3), 100.0), "bias": jnp.full(3, 100.)}}
  tx = optim.create_optimizer(optax.constant_schedule(1.0), momentum=0.0,
                              weight_decay=0.0, agc_clipping=0.01, agc_eps=1e-3)
  updates, _ = tx.update(grads, tx.init(params), params)
  clipped = -np.asarray(updates["conv"]["kernel"])  # lr 1, plain SGD.
  norms_after, weight_norms = _unit_norms(clipped), _unit_norms(kernel)
  np.testing.assert_allclose(norms_after[2], 0.01 * weight_norms[2], rtol=1e-5)
  keep = [0, 1, 3, 4]
  np.testing.assert_allclose(clipped[..., keep], grad_kernel[..., keep],
                             rtol=1e-6)
  np.testing.assert_allclose(-np.asarray(updates["head"]["kernel"]), 100.0)
  np.testing.assert_allclose(-np.asarray(updates["head"]["bias"]), 100.0)


def test_weight_decay_on_kernels_only_and_nesterov_momentum():
  params = {"conv": {"kernel": jnp.full((1, 1, 1, 2), 2.0)},
            "gn": {"scale": jnp.full((2,), 2.0)}}
  grads = {"conv": {"kernel": jnp.zeros((1, 1, 1, 2))},
           "gn": {"scale": jnp.zeros((2,))}}
  tx = optim.create_optimizer(optax.constant_schedule(0.5), momentum=0.9,
                              nesterov=True, weight_decay=0.1, agc_clipping=0)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Nesterov first step: g + 0.9 * g with g = 0.1 * 2.
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.5 * 1.9 * 0.2,
                             rtol=1e-6)
  np.testing.assert_array_equal(updates["gn"]["scale"], 0.0)


def test_warmup_then_step_decay():
  s = optim.create_schedule(0.4, total_steps=100, warmup_steps=10,
                            decay_type="step", decay_boundaries=(30, 60, 80))
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.2, 0.4], rtol=1e-6)
  np.testing.assert_allclose([s(29), s(30), s(59), s(60), s(80), s(99)],
                             [0.4, 0.04, 0.04, 0.004, 0.0004, 0.0004],
                             rtol=1e-5)


def test_warmup_then_cosine():
  s = optim.create_schedule(1.0, total_steps=110, warmup_steps=10,
                            decay_type="cosine")
  np.testing.assert_allclose([s(10), s(60), s(110)], [1.0, 0.5, 0.0],
                             atol=1e-6)


def test_durations_in_epochs_and_linear_lr_scaling():
  c = config_lib.base_config()
  c.batch_size = 512
  c.total_epochs = 90.0
  c.schedule.warmup_epochs = 1.0
  c.schedule.decay_epochs = (30, 60, 80)
  _, schedule, total = optim.from_config(c, steps_per_epoch=10)
  assert total == 900
  peak = 0.01 * 512 / 256
  np.testing.assert_allclose([schedule(10), schedule(299), schedule(300),
                              schedule(800)],
                             [peak, peak, peak * 0.1, peak * 0.001], rtol=1e-5)


def test_steps_and_epochs_together_is_an_error():
  c = config_lib.base_config()
  c.total_steps = 10
  c.total_epochs = 1.0
  with pytest.raises(errors.ConfigError,
                     match=r"total_steps \(10\) and config.total_epochs "
                           r"\(1.0\); set the other to 0"):
    optim.from_config(c, steps_per_epoch=10)
  c.total_epochs = 0.0  # Unset, as from a command line.
  assert optim.from_config(c, steps_per_epoch=10)[2] == 10


def test_decay_boundary_outside_run_is_an_error():
  with pytest.raises(errors.ConfigError, match="outside"):
    optim.create_schedule(0.1, total_steps=100, warmup_steps=10,
                          decay_boundaries=(5,))


def test_repeated_decay_boundaries_compound():
  # HyperRule's 100/200/300/400 of 500 scaled to 2 steps: decays at 1, 1, 2.
  schedule = optim.create_schedule(1.0, 2, 0, "step", (1, 1, 2))
  np.testing.assert_allclose([schedule(0), schedule(1), schedule(2)],
                             [1.0, 0.01, 0.001], rtol=1e-6)


def test_seed_agc_rule_clips_the_head_bias_and_spares_num_classes_wide_kernels():
  """The seed's sgd_agc.py skips 2-D / 4-D tensors whose output units equal
  the class count (PyTorch shape[0]); everything else is clipped, 1-D
  tensors as a whole: the head bias is clipped, and so is not a body kernel
  that happens to have as many output channels as there are classes."""
  params = {"conv": {"kernel": jnp.ones((1, 1, 2, 3))},  # 3 units = classes.
            "other": {"kernel": jnp.ones((1, 1, 2, 4))},
            "gn": {"scale": jnp.ones(4)},
            "head": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0), params)
  clip = {}
  for rule in ("head", "seed"):
    tx = optim.create_optimizer(optax.constant_schedule(1.0), momentum=0.0,
                                weight_decay=0.0, agc_clipping=0.01,
                                agc_eps=1e-3, agc_exclude=rule)
    updates, _ = tx.update(grads, tx.init(params), params)
    clip[rule] = {"/".join(k): bool(np.abs(v).max() < 1.0) for k, v in
                  traverse_util.flatten_dict(updates).items()}
  assert clip["head"] == {"conv/kernel": True, "other/kernel": True,
                          "gn/scale": True, "head/kernel": False,
                          "head/bias": False}
  assert clip["seed"] == {"conv/kernel": False, "other/kernel": True,
                          "gn/scale": True, "head/kernel": False,
                          "head/bias": True}
  # The bias is clipped as one vector: its norm becomes 0.01 * ||bias||.
  tx = optim.create_optimizer(optax.constant_schedule(1.0), momentum=0.0,
                              weight_decay=0.0, agc_exclude="seed")
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(np.linalg.norm(updates["head"]["bias"]),
                             0.01 * np.sqrt(3), rtol=1e-5)


def test_weight_decay_on_every_parameter_as_pytorch_sgd():
  """weight_decay_on='all' (the seed's torch.optim SGD weight_decay): the
  GroupNorm scale and the biases decay like the kernels."""
  params = {"conv": {"kernel": jnp.full((1, 1, 1, 2), 2.0)},
            "gn": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 4.0)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = optim.create_optimizer(optax.constant_schedule(0.5), momentum=0.0,
                              weight_decay=0.1, agc_clipping=0,
                              weight_decay_on="all")
  updates, _ = tx.update(grads, tx.init(params), params)
  jax.tree.map(lambda u, p: np.testing.assert_allclose(u, -0.5 * 0.1 * p,
                                                       rtol=1e-6),
               updates, params)


def test_seed_warmup_ramps_from_lr_over_k_as_its_scheduler():
  """The seed's lr factor during warmup: (1/K) * (e * (K - 1) / W + 1) at
  fractional epoch e of a W-epoch warmup, then 1 until the first decay."""
  config = config_lib.base_config()
  config.total_epochs, config.batch_size = 90.0, 256
  config.optim.base_lr, config.optim.reference_batch_size = 0.08, 256
  config.schedule.warmup_epochs, config.schedule.decay_epochs = 15.0, (30, 60, 80)
  config.schedule.warmup_start, config.schedule.warmup_k = "lr_over_k", 8
  steps_per_epoch = 10.0
  _, schedule, total = optim.from_config(config, steps_per_epoch)
  assert total == 900
  for step in (0, 1, 37, 75, 149, 150, 299):
    e = step / steps_per_epoch
    factor = (1 / 8) * (e * 7 / 15 + 1) if e < 15 else 1.0
    np.testing.assert_allclose(schedule(step), 0.08 * factor, rtol=1e-5)
  np.testing.assert_allclose(schedule(300), 0.008, rtol=1e-5)
  config.schedule.warmup_k = None
  with pytest.raises(errors.ConfigError, match="warmup_k"):
    optim.from_config(config, steps_per_epoch)
