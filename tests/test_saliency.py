"""Class activation maps: exact for our classifiers (their mean is the logit;
Grad-CAM by gradients at the last block is the same map), and on a model
trained to find a generated lesion, the map's peak falls in the lesion."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from big_transfer_med import models
from big_transfer_med import saliency
from input_pipeline import errors


def _variables(name, num_classes, size):
  model = models.get_model(name, num_classes, head_init="normal")
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
  return model, variables


@pytest.mark.parametrize("name", ["R26x1", "resnet18"])
def test_cam_is_the_logit_per_position_and_equals_grad_cam(name):
  model, variables = _variables(name, 3, 96)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 96, 96, 3))
  cams = saliency.class_activation_maps(model, variables, images)
  assert cams.shape == (2, 3, 3, 3)  # Stride 32.
  logits = model.apply(variables, images, train=False)
  np.testing.assert_allclose(cams.mean(axis=(1, 2)), logits, rtol=1e-5,
                             atol=1e-6)
  # Grad-CAM (Selvaraju et al.): the last block's map A weighted by the
  # spatial mean of d logit / d A, through a ReLU. The head is the trained
  # Dense layer applied to the pooled map, as the model computes it.
  features = model.apply(variables, images, feature_map=True, train=False)
  head = variables["params"]["head"]
  to_logits = lambda a: nn.Dense(3).apply(  # noqa: E731
      {"params": head}, jnp.mean(a, axis=(1, 2)))
  np.testing.assert_allclose(to_logits(features), logits, rtol=1e-5,
                             atol=1e-6)
  for k in range(3):
    grads = jax.grad(lambda a, k=k: to_logits(a)[:, k].sum())(features)
    alpha = grads.mean(axis=(1, 2), keepdims=True)
    grad_cam = jax.nn.relu(jnp.sum(alpha * features, axis=-1))
    h, w = features.shape[1:3]
    np.testing.assert_allclose(
        grad_cam * h * w, jax.nn.relu(cams[..., k] - head["bias"][k]),
        rtol=1e-4, atol=1e-5)


def test_classes_to_map():
  scores = {"normal": 0.2, "pneumonia": 0.7, "effusion": 0.1}
  assert saliency.chosen_classes(scores, []) == ["pneumonia"]
  assert saliency.chosen_classes(scores, ["all"]) == list(scores)
  assert saliency.chosen_classes(scores, ["effusion"]) == ["effusion"]
  with pytest.raises(errors.ConfigError, match=r"\['efusion'\]"):
    saliency.chosen_classes(scores, ["efusion"])


def test_written_map_keeps_the_values_and_marks_the_unseen(tmp_path):
  image = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
  cam = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
  cam[:, :2] = -np.inf  # Outside the model's centre crop.
  written = saliency.write_map(image, cam, str(tmp_path / "a_cls_cam"))
  stored = np.load(written["npy"], allow_pickle=False)
  assert np.isnan(stored[:, :2]).all()
  np.testing.assert_array_equal(stored[:, 2:], cam[:, 2:])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  png = np.asarray(Image.open(written["png"]))
  assert png.shape == (12, 16, 3)
  grey = np.round(image * 255).astype(np.uint8)
  np.testing.assert_array_equal(png[:, :2], np.repeat(grey[:, :2, None], 3, -1))
  # Low map values are blue, the highest red.
  assert png[0, 2, 2] > png[0, 2, 0] and png[-1, -1, 0] > png[-1, -1, 2]


def _lesion_batch(rng, n, size=128, radius=0.14, on_cells=False):
  """Noisy grey images in [-1, 1]; label 1: a bright disc (a 'lesion')
  centred anywhere inside the image, or (`on_cells`) on a pixel where a
  cell of the 4x4 map is centred (j * 32, j = 1..3); returns (images,
  labels, centres as fractions of the size)."""
  images = 0.45 + 0.08 * rng.standard_normal((n, size, size))
  labels = rng.integers(0, 2, n)
  centres = (rng.integers(1, 4, (n, 2)) * 32 / size if on_cells
             else rng.uniform(0.2, 0.8, (n, 2)))
  y, x = np.mgrid[0:size, 0:size] / size
  for i in np.flatnonzero(labels):
    disc = (y - centres[i, 0]) ** 2 + (x - centres[i, 1]) ** 2 < radius ** 2
    images[i][disc] += 0.4
  images = np.repeat(images[..., None].astype(np.float32), 3, -1) * 2 - 1
  return images, labels, centres


@pytest.mark.slow
def test_on_a_model_trained_on_lesions_the_peak_is_in_the_lesion():
  """Trained on lesions anywhere; tested on lesions centred where a map
  cell is (so that a 4x4 map can hit an 18 px disc): the peak, placed by
  at_input_size, is in the lesion; placed as a plain resize would (half a
  cell off), it is not."""
  model, variables = _variables("R26x1", 2, 128)
  optimizer = optax.adam(1e-3)
  params = variables["params"]
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss(p):
      logits = model.apply({"params": p}, images, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  rng = np.random.default_rng(0)
  for _ in range(30):
    params, opt_state, value = step(params, opt_state,
                                    *_lesion_batch(rng, 16)[:2])
  assert value < 0.2
  images, labels, centres = _lesion_batch(np.random.default_rng(1), 32,
                                          on_cells=True)
  cams = np.asarray(saliency.class_activation_maps(
      model, {"params": params}, images))[..., 1:]
  placed, resized = [], []
  for i in np.flatnonzero(labels):
    for distances, full in (
        (placed, saliency.at_input_size(cams[i], 128, 128)[..., 0]),
        (resized, np.asarray(jax.image.resize(cams[i][..., 0], (128, 128),
                                              "bilinear")))):
      peak = np.array(np.unravel_index(np.argmax(full), full.shape)) / 128
      distances.append(np.linalg.norm(peak - centres[i]))
  placed, resized = np.array(placed), np.array(resized)
  assert len(placed) >= 10
  assert np.mean(placed < 0.14) >= 0.9, placed  # In the disc.
  assert np.mean(resized < 0.14) <= 0.1, resized  # Half a cell off.


@pytest.mark.parametrize("augment,resize,crop", [("resized_crop", 256, True),
                                                ("resized_crop", 256, False),
                                                ("bit", 256, True)])
def test_input_region_is_what_evaluation_preprocessing_shows(augment, resize,
                                                             crop):
  """Rows and columns of a ramp image read back through the real
  evaluation preprocessing give the region predict maps saliency onto."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from big_transfer_med import config_lib  # pylint: disable=g-import-not-at-top
  from big_transfer_med import predict  # pylint: disable=g-import-not-at-top
  from input_pipeline import preprocessing  # pylint: disable=g-import-not-at-top
  height, width = 300, 400
  data = config_lib.base_config().data
  data.augment, data.resize, data.resolution = augment, resize, 224
  data.crop_to_square, data.channels = crop, 1
  rows = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, 1)
  cols = np.repeat(np.arange(width, dtype=np.float32)[None], height, 0)
  seen = []
  for ramp, size in ((rows, height), (cols, width)):
    out = preprocessing.preprocess(tf.constant(ramp[..., None] / size), data,
                                   train=False, rng=tf.zeros([2], tf.int64))
    # Back to source pixel coordinates (the input is scaled to [-1, 1]).
    seen.append((np.asarray(out)[..., 0] + 1) / 2 * size)
  top, left, n_rows, n_cols = predict.input_region(data, height, width,
                                                   whole_image=False)
  step_r, step_c = n_rows / 224, n_cols / 224  # Source pixels per input one.
  np.testing.assert_allclose(seen[0][0, 0], top + step_r / 2 - 0.5, atol=1.0)
  np.testing.assert_allclose(seen[0][-1, 0], top + n_rows - step_r / 2 - 0.5,
                             atol=1.0)
  np.testing.assert_allclose(seen[1][0, 0], left + step_c / 2 - 0.5, atol=1.0)
  np.testing.assert_allclose(seen[1][0, -1],
                             left + n_cols - step_c / 2 - 0.5, atol=1.0)
