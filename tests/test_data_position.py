"""The data position checkpoints record, against the batches a real Accelerate loop consumes per optimizer step."""

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader

from cascade_clip_hf.training import DataPosition, read_training_state


EPOCHS = 3


def sharded_loaders(num_images: int, batch_size: int, num_processes: int) -> list:
    """Each process's data loader as Accelerate shards the training script's (`drop_last=True`)."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(num_images)), batch_size=batch_size, drop_last=True
    )
    return [
        prepare_data_loader(loader, num_processes=num_processes, process_index=index, put_on_device=False)
        for index in range(num_processes)
    ]


def positions_at_steps(accelerator: Accelerator, loader) -> list[tuple[int, int]]:
    """(epoch, batches consumed in it) after each optimizer step of an `accumulate()` loop over `EPOCHS` epochs."""
    positions = []
    for epoch in range(EPOCHS):
        for consumed, _ in enumerate(loader, start=1):
            with accelerator.accumulate():
                pass
            if accelerator.sync_gradients:
                positions.append((epoch + consumed // len(loader), consumed % len(loader)))
    return positions


@pytest.mark.parametrize("num_processes", [1, 2])
@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_position_after_steps_is_where_accelerate_stands(accumulation, num_processes):
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    for num_images in (4, 5, 6, 7, 9, 12):
        for batch_size in (1, 2):
            loaders = sharded_loaders(num_images, batch_size, num_processes)
            batches_per_epoch = len(loaders[0])
            if batches_per_epoch == 0:
                continue
            assert {len(loader) for loader in loaders} == {batches_per_epoch}
            for loader in loaders:
                actual = positions_at_steps(accelerator, loader)
                assert len(actual) >= EPOCHS
                modelled = [DataPosition.after_steps(step, batches_per_epoch, accumulation) for step in range(1, 99)]
                assert [(position.epoch, position.batches) for position in modelled[: len(actual)]] == actual, (
                    num_images,
                    batch_size,
                )


def test_advancing_one_batch_at_a_time_rolls_over_into_the_next_epoch():
    position = DataPosition(epoch=0, batches=0, batches_per_epoch=3)
    walked = []
    for _ in range(7):
        position = position.advance()
        walked.append((position.epoch, position.batches))
    assert walked == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]


def test_five_batches_with_accumulation_two_take_three_steps_an_epoch():
    """The issue's case: 4 steps consumed 7 batches (a full epoch of 5, then 2), not 4 x 2 = 8."""
    assert DataPosition.after_steps(4, batches_per_epoch=5, accumulation=2) == DataPosition(1, 2, 5)
    assert DataPosition.after_steps(3, batches_per_epoch=5, accumulation=2) == DataPosition(1, 0, 5)


def write_state(tmp_path, state: dict):
    (tmp_path / "training_state.json").write_text(json.dumps(state))
    return tmp_path


def test_the_recorded_position_is_the_one_resumed_from(tmp_path):
    checkpoint = write_state(tmp_path, {"step": 4, "epoch": 1, "batches": 2, "batches_per_epoch": 5})
    assert read_training_state(checkpoint, batches_per_epoch=5, accumulation=2) == (4, DataPosition(1, 2, 5))


def test_a_checkpoint_without_a_position_resumes_where_its_steps_lead(tmp_path, caplog):
    checkpoint = write_state(tmp_path, {"step": 4, "epoch": 1})
    assert read_training_state(checkpoint, batches_per_epoch=5, accumulation=2) == (4, DataPosition(1, 2, 5))
    assert "records no data position" in caplog.text


def test_another_number_of_batches_per_epoch_resumes_at_the_same_fraction(tmp_path, caplog):
    checkpoint = write_state(tmp_path, {"step": 6, "epoch": 2, "batches": 3, "batches_per_epoch": 4})
    assert read_training_state(checkpoint, batches_per_epoch=2, accumulation=1) == (6, DataPosition(2, 1, 2))
    assert "4 batches per epoch and process, this one has 2" in caplog.text
