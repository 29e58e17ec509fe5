"""BiT-HyperRule values and how they fill (only) the unset config keys."""
import pytest

from big_transfer_med import config_lib
from big_transfer_med import hyperrule
from big_transfer_med import optim


@pytest.mark.parametrize("size, expected", [
    (1, (100, 200, 300, 400, 500)),
    (19_999, (100, 200, 300, 400, 500)),
    (20_000, (500, 3000, 6000, 9000, 10_000)),
    (499_999, (500, 3000, 6000, 9000, 10_000)),
    (500_000, (500, 6000, 12_000, 18_000, 20_000)),
    (14_197_122, (500, 6000, 12_000, 18_000, 20_000)),
])
def test_schedule_boundaries(size, expected):
  assert hyperrule.schedule_boundaries(size) == expected


@pytest.mark.parametrize("image_size, expected", [
    ((32, 32), (160, 128)), ((28, 28), (160, 128)), ((95, 96), (160, 128)),
    ((96, 96), (512, 480)), ((500, 375), (512, 480)),
    ((None, None), (512, 480)),  # Variable-size images count as large.
])
def test_resolution(image_size, expected):
  assert hyperrule.resolution(image_size) == expected


def test_mixup_alpha():
  assert hyperrule.mixup_alpha(19_999) == 0.0
  assert hyperrule.mixup_alpha(20_000) == 0.1


def _config(**overrides):
  c = config_lib.base_config()
  c.hyperrule = True
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = c if not path else c[node]
    target[path[-1] if path else node] = value
  return c


def test_apply_fills_every_unset_key():
  c = hyperrule.apply(_config(), 50_000, (32, 32))
  assert c.total_steps == 10_000
  assert c.schedule.warmup_steps == 500
  assert tuple(c.schedule.decay_steps) == (3000, 6000, 9000)
  assert (c.data.resize, c.data.resolution) == (160, 128)
  assert c.mixup_alpha == 0.1


def test_apply_keeps_overrides_and_scales_a_shortened_schedule():
  c = hyperrule.apply(_config(**{"total_steps": 50, "data.resolution": 64,
                                 "mixup_alpha": 0.0}), 100, (500, 500))
  assert c.total_steps == 50
  assert c.schedule.warmup_steps == 10  # 100/500 of 50 steps.
  assert tuple(c.schedule.decay_steps) == (20, 30, 40)
  assert c.data.resolution == 64 and c.data.resize is None
  assert c.mixup_alpha == 0.0


def test_a_schedule_in_epochs_gets_the_rules_warmup_and_decays():
  # 1,000 examples / batch 100 = 10 steps an epoch; 2 epochs = 20 steps of
  # the rule's 500 (< 20k examples): warmup 100 and decays 200/300/400 scaled.
  c = hyperrule.apply(_config(**{"total_epochs": 2.0, "batch_size": 100}),
                      1000, (32, 32))
  assert c.total_steps is None and c.total_epochs == 2.0
  assert c.schedule.warmup_steps == 4
  assert tuple(c.schedule.decay_steps) == (8, 12, 16)
  optimizer, schedule, total = optim.from_config(c, steps_per_epoch=10)
  assert total == 20
  peak = optim.scaled_learning_rate(c.optim.base_lr, 100,
                                    c.optim.reference_batch_size)
  assert float(schedule(4)) == pytest.approx(peak)  # Warmup ends at 4 ...
  assert float(schedule(8)) == pytest.approx(peak * 0.1)  # ... decays at 8.
  assert float(schedule(19)) == pytest.approx(peak * 0.001)


def test_apply_is_off_unless_asked():
  c = config_lib.base_config()
  assert hyperrule.apply(c, 100, (32, 32)) is c
