"""Each command the README and docs/ show runs as written, against a real box."""

from __future__ import annotations

import pytest

from tests.docs.blocks import all_blocks
from tests.docs.harness import can_run, run_document, runnable_documents, summary


def test_every_block_a_reader_would_type_is_run_or_says_why_not() -> None:
    # An unlabelled block that holds commands would escape the doc-test: label it `sh` (it
    # runs, or carries `<!-- doctest: skip (why) -->`) or `text` (output, a synopsis).
    unlabelled = [b.where for b in all_blocks() if not b.lang and b.looks_like_commands()]
    assert not unlabelled, unlabelled
    for block in all_blocks():
        if block.marker and block.lang != "sh":
            pytest.fail(f"{block.where}: a doctest comment before a non-sh block")
        if block.marker not in ("", "tui") and not block.skip_reason:
            pytest.fail(f"{block.where}: unknown doctest comment {block.marker!r}")
    assert sum(b.runs for b in all_blocks()) >= 15


@pytest.mark.netns
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("doc", runnable_documents())
def test_the_commands_of(doc: str) -> None:
    why = can_run()
    if why:
        pytest.skip(f"the doc-test {why}")
    rows = run_document(doc)
    failed = [row for row in rows if row["status"] == "fail"]
    print(f"{doc}: {summary(rows)}")
    assert not failed, "\n\n".join(f"{r['where']}:\n{r.get('output', '')}" for r in failed)
