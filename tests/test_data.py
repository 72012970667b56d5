"""Data sets: the offline digits split, and clear errors where CIFAR-10 / SVHN files are absent."""
import pytest
import torch

from zskt_fast.data import DatasetNotFound, dataset_info, evaluation_loader, load_dataset
from zskt_fast.engine.lifecycle.evaluation import evaluate


def test_digits_split_is_fixed_and_normalised():
    train, test = load_dataset("digits", train=True), load_dataset("digits", train=False)
    assert len(train) == 1400 and len(test) == 397
    images, labels = train.tensors
    assert images.shape == (1400, 1, 8, 8) and labels.unique().tolist() == list(range(10))
    assert abs(images.mean().item()) < 0.01 and abs(images.std().item() - 1) < 0.02
    again = load_dataset("digits", train=True).tensors[0]
    assert torch.equal(images, again)
    # train and test share no image
    test_images = test.tensors[0].flatten(1)
    assert not (images.flatten(1)[:, None, :] == test_images[None]).all(-1).any()


def test_digits_augmentation_shifts_by_at_most_one_pixel():
    plain = load_dataset("digits", train=True)
    augmented = load_dataset("digits", train=True, augment=True)
    torch.manual_seed(0)
    x, y = augmented[5]
    assert x.shape == (1, 8, 8) and y == plain[5][1]
    padded = torch.nn.functional.pad(plain[5][0], (1, 1, 1, 1))
    assert any(torch.equal(x, padded[:, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py"), ("svhn", "test_32x32.mat")])
def test_missing_torchvision_dataset_says_where_it_looked(tmp_path, name, expected):
    with pytest.raises(DatasetNotFound, match=rf"{name} not found: looked for {tmp_path}/{expected}.*--download"):
        evaluation_loader(name, root=str(tmp_path))


def test_unknown_dataset_and_info():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        dataset_info("mnist")
    assert dataset_info("cifar10").channels == 3 and dataset_info("digits").image_size == 8


def test_evaluate_counts_correct_predictions_and_restores_the_mode():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 10).float(), []

    net = Fixed().train()
    loader = [(torch.zeros(4, 1, 8, 8), torch.tensor([0, 0, 1, 2]))]
    assert evaluate(net, loader) == 50.0 and net.training
