"""A small HEAR 2021 module (the HEAR API's three functions) for the `--encoder hear:MODULE` tests:
16 log-magnitude channels of a seeded random convolution, 100 ms frames every 50 ms, centred on
multiples of 50 ms from the clip's start; the scene embedding is their mean and maximum."""
import torch
from torch import nn


class ToyModel(nn.Module):
    sample_rate = 16000
    timestamp_embedding_size = 16
    scene_embedding_size = 32
    hop = 800

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 16, kernel_size=2 * self.hop, stride=self.hop, padding=self.hop)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.05)
            self.conv.bias.zero_()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.log1p(self.conv(audio[:, None]).abs() * 100).transpose(1, 2)


def load_model(model_file_path: str = "") -> ToyModel:
    model = ToyModel()
    if model_file_path:
        model.load_state_dict(torch.load(model_file_path, weights_only=True))
    return model.eval()


def get_timestamp_embeddings(audio: torch.Tensor, model: ToyModel) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings = model(audio)
    times = torch.arange(embeddings.shape[1], dtype=torch.float32) * model.hop / model.sample_rate * 1000.0
    return embeddings, times.expand(audio.shape[0], -1)


def get_scene_embeddings(audio: torch.Tensor, model: ToyModel) -> torch.Tensor:
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return torch.cat([embeddings.mean(dim=1), embeddings.amax(dim=1)], dim=1)
