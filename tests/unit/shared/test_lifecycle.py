"""The job lifecycle's table of states and moves, and its scripts' use of it."""

import re

from shared.lifecycle import TRANSITIONS, JobStatus, scripts


def test_every_status_has_its_moves_and_terminal_ones_have_none() -> None:
    assert set(TRANSITIONS) == set(JobStatus)
    for status, moves in TRANSITIONS.items():
        assert status.terminal == (not moves), status
        assert status not in moves


def test_scripts_name_only_real_statuses() -> None:
    sources = [scripts.BEGIN, scripts.CLAIM_OUTPUT, scripts.END, scripts.EXPIRE, scripts.CANCEL]
    for source in sources:
        assert "$" not in source  # every placeholder was filled from JobStatus
        set_to = re.findall(r"'status', '(\w+)'", source)
        assert set(set_to) <= {s.value for s in JobStatus}, set_to
