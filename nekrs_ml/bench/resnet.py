"""ResNet-50 for `bench inference --models resnet50`: the architecture of torchvision's
``resnet50()`` (Bottleneck blocks [3, 4, 6, 3], 25.6 M parameters, 1000 classes, 224x224x3
images) written here, because torchvision's wheels are built against one torch release and do
not load against every torch the project runs with.

The weights are those of torchvision's constructor (its initialisation scheme, from a fixed
seed; nothing is downloaded), in eval mode (BatchNorm uses its running statistics). The
inference wire format is 2-D ``[rows, features]``, so the benchmark's model takes images
flattened, ``[images, 3*224*224]`` float32, reshapes them inside and answers ``[images, 1000]``:
every inference path (worker, in-process package, RedisAI) carries it unchanged.

The reference figure is the one the in-situ ML coupling of NekRS was shown with (Balin et al.
2023, ALCF Polaris, SmartSim/RedisAI, ResNet-50 inference from the simulation reproducer):
about 20 ms of model evaluation and 38-40 ms per call (send + run + retrieve), flat in weak
scaling up to 448 nodes.
"""

from __future__ import annotations

import io

CHANNELS, HEIGHT, WIDTH = 3, 224, 224
IMAGE_FEATURES = CHANNELS * HEIGHT * WIDTH  # 150528 float32 per image on the wire
CLASSES = 1000
LAYERS = (3, 4, 6, 3)  # Bottleneck blocks per stage (ResNet-50)
SEED = 0

REFERENCE = {
    "source": "Balin et al. 2023, In Situ Framework for Coupling Simulation and Machine "
              "Learning with Application to CFD",
    "machine": "ALCF Polaris, NVIDIA A100 GPUs, SmartSim/RedisAI",
    "model_evaluation_ms": 20.0,
    "per_call_ms": [38.0, 40.0],
    "per_call": "send + run + retrieve from the simulation reproducer, flat in weak scaling to "
                "448 nodes",
}

# Which of the reference's figures a path is compared with: the bare forward and the in-process
# package evaluate only the model; the worker and RedisAI paths make the whole call.
REFERENCE_FIGURE = {"forward": "model_evaluation_ms", "inprocess-cpp": "model_evaluation_ms",
                    "worker": "per_call_ms", "redisai": "per_call_ms"}


def _modules():
    """The model classes (torch is imported only when a ResNet is built)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 convolution)."""
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1,
                     downsample: nn.Module = None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * self.expansion)
            self.relu = nn.ReLU(inplace=True)
            # Identity when the shapes match: TorchScript (RedisAI's form) scripts a module
            # attribute, not an Optional one
            self.downsample = downsample if downsample is not None else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            identity = self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet50(nn.Module):
        """ResNet-50 taking flattened images [images, 3*224*224], answering [images, 1000]."""

        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(CHANNELS, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._stage(64, LAYERS[0])
            self.layer2 = self._stage(128, LAYERS[1], stride=2)
            self.layer3 = self._stage(256, LAYERS[2], stride=2)
            self.layer4 = self._stage(512, LAYERS[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * Bottleneck.expansion, CLASSES)
            # torchvision's initialisation (zero_init_residual=False); nn.Linear keeps its own
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.constant_(module.weight, 1)
                    nn.init.constant_(module.bias, 0)

        def _stage(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
            downsample = None
            if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride,
                              bias=False),
                    nn.BatchNorm2d(planes * Bottleneck.expansion))
            layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * Bottleneck.expansion
            layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the wire carries 2-D [rows, features]: one row per image (literals: TorchScript
            # does not read module globals)
            x = x.view(-1, 3, 224, 224)
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet50


def resnet50():
    """The benchmark's ResNet-50 in eval mode, its weights from torchvision's initialisation
    with seed SEED: every form (torch.export, TorchScript) is made from it, so all carry the
    same weights."""
    import torch

    torch.manual_seed(SEED)
    model = _modules()().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            # a training counter, unused in eval: AOTInductor leaves unused buffers out of its
            # package, and the in-process backend wants every weight of the program in it
            module.num_batches_tracked = None
    return model


def parameter_count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def program_blob(torchscript: bool = False) -> bytes:
    """The torch.export program of the benchmark's ResNet-50 (the images dimension dynamic), or
    the same weights as TorchScript (what RedisAI runs)."""
    import torch

    module = resnet50()
    buffer = io.BytesIO()
    if torchscript:
        torch.jit.save(torch.jit.script(module), buffer)
    else:
        example = torch.zeros(2, IMAGE_FEATURES)
        program = torch.export.export(module, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("images")},))
        torch.export.save(program, buffer)
    return buffer.getvalue()
