"""The vLLM plugin that caps the engine's shared-memory busy wait (server/backends/vllm_busy_wait.py)."""

from __future__ import annotations

from importlib.metadata import entry_points


def test_plugin_is_registered_for_vllm_and_caps_readers(monkeypatch):
    import zmq
    from glider.server.backends import vllm_busy_wait
    from vllm.distributed.device_communicators import shm_broadcast

    names = {e.value for e in entry_points(group="vllm.general_plugins")}
    assert "glider.server.backends.vllm_busy_wait:bound_busy_wait" in names  # vLLM loads it in every process

    context = zmq.Context()
    address = "inproc://glider-busy-wait-test"
    writer = shm_broadcast.SpinCondition(is_reader=False, context=context, notify_address=address)
    reader = shm_broadcast.SpinCondition(is_reader=True, context=context, notify_address=address)
    original = shm_broadcast.SpinCondition.wait
    try:
        monkeypatch.delenv(vllm_busy_wait.ENV, raising=False)
        vllm_busy_wait.bound_busy_wait()  # unset: vLLM's own behaviour
        assert shm_broadcast.SpinCondition.wait is original
        monkeypatch.setenv(vllm_busy_wait.ENV, "1")
        vllm_busy_wait.bound_busy_wait()  # 1 s or more: vLLM's own too
        assert shm_broadcast.SpinCondition.wait is original
        monkeypatch.setenv(vllm_busy_wait.ENV, "0.002")
        vllm_busy_wait.bound_busy_wait()
        vllm_busy_wait.bound_busy_wait()  # loading twice is harmless
        assert reader.busy_loop_s == 1  # a reader made before the plugin loaded ...
        reader.wait(timeout_ms=0)
        assert reader.busy_loop_s == 0.002  # ... is capped on its next wait
        assert writer.busy_loop_s == 0  # writers never spin
    finally:
        shm_broadcast.SpinCondition.wait = original
        if hasattr(shm_broadcast.SpinCondition, "_glider_window"):
            del shm_broadcast.SpinCondition._glider_window
        for socket in (writer.local_notify_socket, reader.local_notify_socket, reader.read_cancel_socket,
                       reader.write_cancel_socket):
            socket.close(linger=0)
        context.term()
