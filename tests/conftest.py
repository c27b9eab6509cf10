import pytest

from controller.runner import RoomServer
from tests.helpers import keys_for, room_config


@pytest.fixture
def config():
    return room_config()


@pytest.fixture
def keys(config):
    return keys_for(config)


@pytest.fixture
async def server(tmp_path, config, keys):
    async with RoomServer(config, keys, tmp_path / "room.db", api_port=0, node_port=0) as srv:
        yield srv
