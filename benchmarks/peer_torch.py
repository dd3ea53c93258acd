"""The three networks of keras_tutorial.models in PyTorch, trained and served as the project's:
`python -m benchmarks.peer_torch --model=cnn --data=arrays.npz ... [--variant=compile]`.

Same data (uint8 images rescaled inside the model), batch, Adam (Keras's epsilon) with the
project's learning rate on a cosine decay to zero, Keras's initializers, and for the CNN the
same layer order (pooling before batch norm, Keras's momentum and epsilon), random mirroring in
training and predictions averaged over each image and its mirror. Batches are gathered from
tensors in memory, as the project's pipeline gathers them. `--variant=compile` wraps the model
in `torch.compile` (Inductor, which compiles forward and backward on the first step).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks import peer_common

VARIANTS = ("eager", "compile")
KERAS_BN_MOMENTUM, KERAS_BN_EPSILON, KERAS_ADAM_EPSILON = 0.01, 1e-3, 1e-7


class Rescale(nn.Module):
    """uint8 pixels to floats in [0, 1], inside the model as the project does."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * (1.0 / 255)


class RowsLSTM(nn.Module):
    """Reads each image's 28 rows as time steps; the last hidden state is classified."""

    def __init__(self, units: int = 128):
        super().__init__()
        self.rescale = Rescale()
        self.lstm = nn.LSTM(28, units, batch_first=True)
        self.logits = nn.Linear(units, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rows = self.rescale(images).flatten(1, 2)  # [batch, 1, 28, 28] -> [batch, 28, 28]
        _, (hidden, _) = self.lstm(rows)
        return self.logits(hidden[-1])


def build(name: str) -> nn.Module:
    """The network `models.build(name)` makes, NCHW; Keras's initial weights (below)."""
    if name == "mlp":
        net = nn.Sequential(Rescale(), nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                            nn.Linear(256, 10))
    elif name == "cnn":
        def block(inputs: int, width: int, pool: bool) -> list[nn.Module]:
            return [nn.Conv2d(inputs, width, 3, bias=False),
                    *([nn.MaxPool2d(2)] if pool else []),
                    nn.BatchNorm2d(width, eps=KERAS_BN_EPSILON, momentum=KERAS_BN_MOMENTUM),
                    nn.ReLU()]
        net = nn.Sequential(Rescale(), *block(1, 32, True), *block(32, 64, True),
                            *block(64, 128, False), nn.Flatten(), nn.Linear(1152, 128),
                            nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10))
    else:
        net = RowsLSTM()
    keras_initialization(net)
    return net


def keras_initialization(net: nn.Module) -> None:
    """Keras's defaults: Glorot-uniform kernels, zero biases; the LSTM's recurrent kernel
    orthogonal and its forget gate's bias 1. Torch's LSTM adds two bias vectors where Keras
    has one: the second stays zero and frozen, so the function and the trainable parameters
    are Keras's."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM):
            units = module.hidden_size
            nn.init.xavier_uniform_(module.weight_ih_l0)
            nn.init.orthogonal_(module.weight_hh_l0)
            with torch.no_grad():
                module.bias_ih_l0.zero_()
                module.bias_ih_l0[units:2 * units] = 1.0  # Gates in order i, f, g, o.
                module.bias_hh_l0.zero_()
            module.bias_hh_l0.requires_grad_(False)


def param_counts(net: nn.Module) -> dict[str, int]:
    """Trainable weights, and moving statistics (Keras's non-trainable weights)."""
    return {"trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "non_trainable": sum(b.numel() for name, b in net.named_buffers()
                                 if name.endswith(("running_mean", "running_var")))}


def mirrored(images: torch.Tensor) -> torch.Tensor:
    """Each image mirrored left-right (NCHW)."""
    return images.flip(3)


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2, as data.py's pipeline does."""
    flip = torch.rand(len(images), 1, 1, 1, generator=generator) < 0.5
    return torch.where(flip, mirrored(images), images)


def predict_logits(net: nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """Inference logits; a model trained on mirrors averages each image's with its mirror's,
    both in one batch as the project's AppendMirrors does."""
    if not flip:
        return net(images)
    both = net(torch.cat([images, mirrored(images)]))
    return both.view(2, len(images), -1).mean(0)


def test_accuracy(net: nn.Module, split: peer_common.Split, flip: bool) -> float:
    """Accuracy on the test split, in ten batches, in inference mode."""
    net.eval()
    with torch.inference_mode():
        correct = sum(int((predict_logits(net, torch.from_numpy(x), flip).argmax(1)
                           == torch.from_numpy(y)).sum())
                      for x, y in zip(np.array_split(split.x_test, 10),
                                      np.array_split(split.y_test, 10)))
    net.train()
    return correct / len(split.y_test)


def nchw(images: np.ndarray) -> torch.Tensor:
    """[N,28,28,1] uint8 to torch's layout, [N,1,28,28]."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def main(argv: list[str]) -> None:
    args = peer_common.parse_args(argv, VARIANTS)
    torch.manual_seed(args.seed)
    net = build(args.model)
    params = param_counts(net)
    if args.params_only:
        peer_common.emit("pytorch", args, params)
        return
    raw = peer_common.load(args)
    split = peer_common.Split(nchw(raw.x_train).numpy(), raw.y_train, nchw(raw.x_test).numpy(),
                              raw.y_test)
    images, labels = torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)
    steps = len(images) // args.batch_size
    optimizer = torch.optim.Adam(net.parameters(), lr=args.learning_rate,
                                 eps=KERAS_ADAM_EPSILON)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=peer_common.schedule_steps(args, steps))
    model = torch.compile(net) if args.variant == "compile" else net
    generator = torch.Generator().manual_seed(args.seed)
    net.train()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    progress = peer_common.Progress(args, lambda: test_accuracy(model, split, args.flip))
    for _ in range(args.schedule_epochs):
        progress.epoch_begins()
        started = time.perf_counter()
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps):
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = images[batch]
            train_step(random_flips(x, generator) if args.flip else x, labels[batch])
        if progress.epoch_done(steps * args.batch_size, time.perf_counter() - started):
            break

    model.eval()

    def serve(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return predict_logits(model, torch.from_numpy(image), args.flip).argmax(1).numpy()

    latency = peer_common.latency_ms(args, serve, split.x_test[:1])
    peer_common.emit("pytorch", args, params, **progress.result(), latency_ms=latency,
                     version=torch.__version__, threads=torch.get_num_threads())


if __name__ == "__main__":
    main(sys.argv[1:])
