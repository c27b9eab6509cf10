import pytest

from controller.runner import RoomServer
from controller.security.tokens import ROLES
from tests.helpers import keys_for, room_config


@pytest.fixture
def config():
    return room_config()


@pytest.fixture
def keys(config):
    return keys_for(config)


@pytest.fixture
async def server(tmp_path, config, keys):
    """A running room; ``server.tokens`` holds one API token per role."""
    async with RoomServer(config, keys, tmp_path / "room.db", api_port=0, node_port=0) as srv:
        srv.tokens = {role: await srv.create_token(role, f"test {role}") for role in ROLES}
        yield srv


# Under pytest-xdist (`make test-parallel`: -n auto --dist loadgroup) the tests that bind mDNS's
# port 5353 on loopback run on one worker, one after another, as they do in a serial run.
MDNS_MODULES = ("test_discovery_tls.py", "test_room_network.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in MDNS_MODULES:
            item.add_marker(pytest.mark.xdist_group("mdns"))
