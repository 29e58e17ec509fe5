"""The train state and the step that updates it: what runs on the devices.

No data and no TensorFlow here, so the step can be built and timed where only
JAX is installed (benchmark.py on a fresh accelerator machine); train.py
drives it over the input pipeline.
"""
import functools
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from big_transfer_med import losses
from big_transfer_med import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  # The model's variable collections other than params (e.g. BatchNorm's
  # batch_stats); empty for BiT.
  model_state: Any
  opt_state: Any
  rng: jax.Array  # Base key; step keys are fold_in(rng, step).


def variables_of(state: TrainState) -> Dict[str, Any]:
  """The model variables of `state`, as model.apply takes them."""
  return {"params": state.params, **state.model_state}


def create_train_state(config, model, optimizer, image_shape) -> TrainState:
  """Initialises parameters (head zero) and optimiser state from config.seed."""
  return _init_function(model, optimizer, tuple(image_shape))(
      jax.random.PRNGKey(config.seed))


@functools.lru_cache(maxsize=16)
def _init_function(model, optimizer, image_shape):
  """The jitted initialiser; the seed is an argument, so one executable
  serves every seed (and every run of one process with these settings)."""
  @jax.jit
  def init(rng):
    init_rng, state_rng = jax.random.split(rng)
    variables = flax.core.unfreeze(
        model.init(init_rng, jnp.zeros((1,) + image_shape)))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      model_state=variables, opt_state=optimizer.init(params),
                      rng=state_rng)
  return init


def mixup(rng, alpha: float, images, labels, mask):
  """MixUp with lambda ~ Beta(alpha, alpha): each example is mixed with its
  mirror in the batch. Soft labels work for softmax and sigmoid losses
  alike; a label counts only where both mixed examples have it (mask
  product). Returns the mixed images, labels and mask, and lambda."""
  lam = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: lam * x + (1.0 - lam) * x[::-1]  # noqa: E731
  return mix(images), mix(labels), mask * mask[::-1], lam


def summed_loss_and_grads(params, model_state, examples, *, model, loss_fn,
                          accum_steps: int = 1):
  """(summed loss, example count, model state, summed gradient) over
  `examples` = (images, labels, mask), in `accum_steps` micro-batches run
  one after another (lax.scan), so that only one micro-batch's activations
  are live. Sums, not means, so the result equals the unsplit one up to
  float32 summation order. Collections the model updates (BatchNorm) are
  updated per micro-batch, as the seed's batch_split does."""
  def micro_batch(model_state, images, labels, mask):
    def loss_of(params):
      variables = {"params": params, **model_state}
      if model_state:  # Collections the model updates (BatchNorm).
        logits, new_state = model.apply(variables, images, train=True,
                                        mutable=list(model_state))
      else:
        logits, new_state = model.apply(variables, images, train=True), {}
      total, count = loss_fn(logits, labels, mask)
      return total, (count, new_state)
    (total, (count, new_state)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(params)
    return total, count, new_state, grads

  if accum_steps == 1:
    return micro_batch(model_state, *examples)
  micro = tuple(x.reshape((accum_steps, x.shape[0] // accum_steps) + x.shape[1:])
                for x in examples)

  def add_micro_batch(sums, micro_examples):
    total, count, state_now, grads = sums
    t, c, state_now, g = micro_batch(state_now, *micro_examples)
    return (total + t, count + c, state_now, jax.tree.map(jnp.add, grads, g)), None

  shapes = jax.eval_shape(micro_batch, model_state, *(x[0] for x in micro))
  zeros = lambda tree: jax.tree.map(  # noqa: E731
      lambda s: jnp.zeros(s.shape, s.dtype), tree)
  sums, _ = jax.lax.scan(
      add_micro_batch,
      (zeros(shapes[0]), zeros(shapes[1]), model_state, zeros(shapes[3])),
      micro)
  return sums


def train_step(state: TrainState, batch, *, model, loss_fn, optimizer,
               schedule, mixup_alpha: float = 0.0, accum_steps: int = 1):
  """One SGD step on this device's share of the global batch, in
  `accum_steps` micro-batches."""
  images, labels, mask = batch["image"], batch["labels"], losses.loss_mask(batch)
  step_metrics = {}
  if mixup_alpha:
    # One lambda per step, the same on every device (the key is replicated);
    # each device mixes within its share of the batch, before it is split
    # into micro-batches, so that accumulation changes nothing.
    rng = jax.random.fold_in(state.rng, state.step)
    images, labels, mask, step_metrics["mixup_lambda"] = mixup(
        rng, mixup_alpha, images, labels, mask)
  total, count, model_state, grads = summed_loss_and_grads(
      state.params, state.model_state, (images, labels, mask), model=model,
      loss_fn=loss_fn, accum_steps=accum_steps)
  count = jnp.maximum(parallel.sum_over_devices(count), 1.0)
  grads = jax.tree.map(lambda g: parallel.sum_over_devices(g) / count, grads)
  loss = parallel.sum_over_devices(total) / count
  # The optimiser zeroes the update of a step with a non-finite gradient
  # (optax.apply_if_finite); the host applies config.on_nonfinite.
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.tree.norm(grads)
  step_metrics.update({
      "train_loss": loss,
      "learning_rate": schedule(state.step),
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(params),
      "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(
          jnp.float32),
  })
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      # Every device keeps the same statistics.
      model_state=parallel.mean_over_devices(model_state))
  return new_state, step_metrics


def reestimate_batch_stats(state: TrainState, batches, steps: int, *, model
                           ) -> TrainState:
  """`state` (replicated) with its BatchNorm running averages replaced by
  the mean of `steps` global training batches' statistics (synchronised as
  in training; the variance unbiased as PyTorch's), parameters untouched:
  re-estimation for a target whose statistics differ from the source's
  (config.init.reestimate_batch_stats)."""
  measure = parallel.per_device_with(_batch_stats_of,
                                     model=model.clone(bn_momentum=1.0))
  total = None
  for _ in range(steps):
    stats = measure(state, next(batches))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return state.replace(model_state=jax.tree.map(lambda t: t / steps, total))


def _batch_stats_of(state: TrainState, batch, *, model):
  """The model state a train-mode pass over `batch` leaves (per device)."""
  return model.apply(variables_of(state), batch["image"], train=True,
                     mutable=list(state.model_state))[1]
