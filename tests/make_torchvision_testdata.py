"""Writes tests/testdata/torch/moco_tiny_resnet.pth.tar and its expected
outputs with real PyTorch and torchvision (run once; its outputs are
committed, so that the tests check the loader without PyTorch):

  pip install -r requirements-peers.txt
  python tests/make_torchvision_testdata.py

The model is torchvision's own ResNet with Bottleneck blocks at depths
(2, 1, 1, 1) and a base width of 8 (torchvision's _make_layer, so its
names, strides and shortcuts), wrapped as a MoCo v2 release wraps its
ResNet-50: {'epoch', 'arch', 'state_dict': {module.encoder_q.<backbone>,
module.encoder_q.fc.{0,2} (the MLP projection head), module.encoder_k.<the
start of a momentum copy>, module.queue, module.queue_ptr}, 'optimizer'}.
"""
import os

import numpy as np
import torch
from torchvision.models import resnet

OUT = os.path.join(os.path.dirname(__file__), "testdata", "torch")
DEPTHS, BASE_WIDTH, IMAGE_SIZE = (2, 1, 1, 1), 4, 32


def tiny_torchvision_resnet(block=resnet.Bottleneck, depths=DEPTHS,
                            base_width=BASE_WIDTH, width_per_group=64,
                            num_classes=5, seed=0):
  """torchvision's ResNet at `base_width` channels (not 64), with random
  BatchNorm statistics (randomize_batch_norm)."""
  torch.manual_seed(seed)
  model = resnet.ResNet(block, [1, 1, 1, 1], num_classes=num_classes,
                        width_per_group=width_per_group)
  model.inplanes = base_width
  model.conv1 = torch.nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
  model.bn1 = torch.nn.BatchNorm2d(base_width)
  for i, depth in enumerate(depths):
    setattr(model, f"layer{i + 1}", model._make_layer(  # pylint: disable=protected-access
        block, base_width * 2**i, depth, stride=1 if i == 0 else 2))
  model.fc = torch.nn.Linear(base_width * 8 * block.expansion, num_classes)
  randomize_batch_norm(model)
  return model


def randomize_batch_norm(model) -> None:
  """Random BatchNorm affine parameters and running averages (as a trained
  model has, unlike a fresh one's 1 / 0 / 0 / 1), in place."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0, 0.2)
        module.running_mean.normal_(0, 0.3)
        module.running_var.uniform_(0.5, 2.0)


def main():
  model = tiny_torchvision_resnet()
  backbone = {k: v for k, v in model.state_dict().items()
              if not k.startswith("fc.")}
  torch.manual_seed(1)
  state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
  state.update({"module.encoder_q.fc.0.weight": torch.randn(16, 128),
                "module.encoder_q.fc.0.bias": torch.randn(16),
                "module.encoder_q.fc.2.weight": torch.randn(8, 16),
                "module.encoder_q.fc.2.bias": torch.randn(8)})
  # The start of the momentum copy: enough to be a second backbone.
  state.update({f"module.encoder_k.{k}": v + 1.0 for k, v in backbone.items()
                if k.startswith(("conv1.", "bn1.", "layer1.0.conv1."))})
  state.update({"module.queue": torch.randn(8, 32),
                "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
  torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state,
              "optimizer": {"state": {}, "param_groups": [
                  {"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}},
             os.path.join(OUT, "moco_tiny_resnet.pth.tar"))

  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  inputs = torch.from_numpy(images.transpose(0, 3, 1, 2))
  model.fc = torch.nn.Identity()  # The backbone's pre-logit features.
  model.eval()
  with torch.no_grad():
    eval_features = model(inputs).numpy()
  model.train()  # One forward pass with batch statistics.
  with torch.no_grad():
    train_features = model(inputs).numpy()
  running = {k: v.numpy() for k, v in model.state_dict().items()
             if k.endswith(("running_mean", "running_var"))}
  np.savez(os.path.join(OUT, "moco_tiny_resnet_expected.npz"), images=images,
           eval_features=eval_features, train_features=train_features,
           **{f"after_train/{k}": v for k, v in running.items()})


if __name__ == "__main__":
  main()
