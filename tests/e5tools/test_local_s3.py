import pytest

from e5tools.local_s3 import free_ports

pytestmark = pytest.mark.unit


def test_free_ports_are_distinct():
    """Picked one at a time, a just-released port can come back (CI: Ray refused two components on one port)."""
    ports = free_ports(64)
    assert len(set(ports)) == 64 and all(0 < p < 65536 for p in ports)
