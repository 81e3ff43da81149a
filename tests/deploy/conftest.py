"""The deploy tests' shared fixture: a real sshd to deploy to."""

from __future__ import annotations

import pytest

from tests.deploy import sshd as sshd_helper


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A private sshd on a free loopback port (openssh-server installed with apt first when missing)."""
    reason = sshd_helper.ensure_sshd()
    if reason:
        pytest.skip(reason)
    srv = sshd_helper.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield srv
    srv.stop()
