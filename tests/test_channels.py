"""LocalKernelChannels reads signed kernel messages as jupyter_client's Session does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jupyter_exec_ext.channels import LocalKernelChannels


@contextlib.asynccontextmanager
async def kernel_channels(jp_serverapp: Any) -> AsyncIterator[LocalKernelChannels]:
    """Channels to a new kernel of the server, shut down afterwards."""
    kernel_manager = jp_serverapp.kernel_manager
    kernel_id = await kernel_manager.start_kernel(kernel_name="python3")
    channels = LocalKernelChannels(kernel_manager, kernel_id)
    try:
        yield channels
    finally:
        channels.stop_channels()
        await kernel_manager.shutdown_kernel(kernel_id, now=True)


def _frames(channels: LocalKernelChannels, content: dict[str, Any]) -> list[bytes]:
    """A status message signed with the kernel's key, as the kernel sends it."""
    kernel_session = channels.kernel.session
    message = kernel_session.msg("status", content)
    return list(kernel_session.serialize(message))


async def test_a_signed_message_is_read_with_its_dates_as_text(jp_serverapp: Any) -> None:
    async with kernel_channels(jp_serverapp) as channels:
        message = channels._decode(_frames(channels, {"execution_state": "idle"}))
    assert message["content"] == {"execution_state": "idle"}
    assert message["header"]["msg_type"] == "status"
    assert isinstance(message["header"]["date"], str)


async def test_a_replayed_message_is_refused(jp_serverapp: Any) -> None:
    async with kernel_channels(jp_serverapp) as channels:
        frames = _frames(channels, {"execution_state": "idle"})
        channels._decode(frames)
        with pytest.raises(ValueError, match="Duplicate signature"):
            channels._decode(frames)


async def test_a_tampered_message_is_refused(jp_serverapp: Any) -> None:
    async with kernel_channels(jp_serverapp) as channels:
        frames = _frames(channels, {"execution_state": "idle"})
        frames[-1] = frames[-1].replace(b"idle", b"busy")
        with pytest.raises(ValueError, match="Invalid signature"):
            channels._decode(frames)


async def test_a_short_message_is_refused(jp_serverapp: Any) -> None:
    async with kernel_channels(jp_serverapp) as channels:
        with pytest.raises(ValueError, match="Malformed"):
            channels._decode(_frames(channels, {})[:3])
