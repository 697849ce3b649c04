"""The served model's embeddings read from its file (generation/model/file_rows.py): the same
rows as the mapped table, and none of the table resident in the process after lookups."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from generation.model.file_rows import FileRows
from generation.model.loading import load_model
from tests.generation.model.pages import resident


@pytest.fixture(scope="module")
def served(model_cache_dir: Path):
    return load_model(None, "cpu", model_cache_dir, "auto", memory="1MiB")


def test_the_rows_read_from_the_file_are_the_table_s(served):
    embeddings = served.model.get_input_embeddings()
    assert isinstance(embeddings, FileRows)
    ids = torch.tensor([[0, 5, 5, 49151], [17, 3, 0, 1000]])
    assert torch.equal(embeddings(ids), F.embedding(ids, embeddings.weight))
    assert torch.equal(embeddings.read_table(), embeddings.weight)
    again = copy.deepcopy(embeddings)  # as PEFT users copy a model: its own descriptor
    assert torch.equal(again(ids), embeddings(ids))
    with pytest.raises(IndexError):
        embeddings(torch.tensor([embeddings.num_embeddings]))
    with pytest.raises(IndexError):
        embeddings(torch.tensor([-1]))


def test_lookups_leave_the_table_out_of_the_process_s_memory(model_cache_dir: Path):
    # Looked up through the mapping, a few hundred tokens made a 1.7B model's whole fp32 table
    # resident: the kernel maps the page cache's large folio around each row.
    fresh = load_model(None, "cpu", model_cache_dir, "auto", memory="1MiB")  # nothing read yet
    embeddings = fresh.model.get_input_embeddings()
    table = embeddings.weight
    ids = torch.randint(
        0, embeddings.num_embeddings, (16, 64), generator=torch.Generator().manual_seed(0)
    )
    before = resident(table.data_ptr(), table.nbytes)
    embeddings(ids)
    assert resident(table.data_ptr(), table.nbytes) - before < 0.02 * table.nbytes
    F.embedding(ids, table)  # what the mapping costs: the check sees it
    assert resident(table.data_ptr(), table.nbytes) - before > 0.1 * table.nbytes
