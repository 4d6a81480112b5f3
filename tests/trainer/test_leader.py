"""The trainer sidecars' leader lock on a real redis-server: one leads, a dead leader is replaced,
and a leader that lost the lock finds out before it publishes."""

import threading
import time

import pytest
from glider.trainer.leader import LeaderLock, LeadershipLost


def test_one_leader_at_a_time_and_a_dead_leader_is_replaced(redis_url):
    first = LeaderLock(redis_url, ttl_s=1.0, identity="pod-a")
    second = LeaderLock(redis_url, ttl_s=1.0, identity="pod-b")
    first.acquire(poll_s=0.05)
    with pytest.raises(TimeoutError):
        second.acquire(poll_s=0.05, timeout_s=2.5)  # the renewals keep pod-a's lock past its TTL
    first.check()
    assert first.leader() == "pod-a"

    first._stop.set()  # pod-a hangs: no more renewals, and no release
    first._thread.join()
    second.acquire(poll_s=0.05, timeout_s=5)
    assert second.leader() == "pod-b"
    with pytest.raises(LeadershipLost, match="held by pod-b"):
        first.check()  # what run_o2o calls before every publish
    second.close()
    assert second.leader() is None  # a clean exit hands the lock on at once
    first._redis.close()


def test_a_waiting_trainer_takes_over_when_the_leader_exits(redis_url):
    leader = LeaderLock(redis_url, ttl_s=30.0, identity="pod-a")
    leader.acquire(poll_s=0.05)
    waiter = LeaderLock(redis_url, ttl_s=30.0, identity="pod-b")
    took_over = threading.Event()

    def wait():
        waiter.acquire(poll_s=0.05, timeout_s=10)
        took_over.set()

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.3)
    assert not took_over.is_set()
    leader.close()  # released, not expired: no 30 s wait
    t.join(timeout=10)
    assert took_over.is_set() and waiter.leader() == "pod-b"
    waiter.close()
