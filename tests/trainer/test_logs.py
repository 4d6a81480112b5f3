"""Episode logs on a shared volume: one folder per replica, one episode's steps spread over them."""

from glider.server.store.recorder import TrajectoryRecorder
from glider.trainer.data.logs import log_files, trajectories_from_logs


def record(step: int, observation: str, action: str | None, reward: float = 0.0, done: bool = False) -> dict:
    return {"time": float(step), "episode_id": "ep-1", "task": "find a plant", "mode": "separate",
            "step": step, "observation": observation, "reward": reward, "done": done, "score": None,
            "action": action, "subgoal": "go to the garden", "new_subgoal": step == 0,
            "subgoal_done": False, "subgoal_index": 0, "total_reward": reward, "fallback": False,
            "adapter_versions": {"planner": "v0001"}, "latency_ms": 1.0}


def test_an_episode_served_by_two_replicas_reads_back_whole(tmp_path):
    # replicas a and b share one Redis, so the episode's steps alternate between their logs
    a, b = (TrajectoryRecorder(tmp_path / name) for name in ("pod-a", "pod-b"))
    for rec in (a, b):
        rec.start()
    a.record(record(0, "hallway", "go to garden"))
    b.record(record(1, "garden", "look around", reward=0.25))
    a.record(record(2, "a plant", "focus on plant", reward=0.25))
    b.record(record(3, "done", None, reward=0.5, done=True))
    for rec in (a, b):
        rec.close()
    assert {p.parent.name for p in log_files(tmp_path)} == {"pod-a", "pod-b"}
    (traj,) = trajectories_from_logs(tmp_path)
    assert [s.action for s in traj.steps] == ["go to garden", "look around", "focus on plant"]
    assert [s.reward for s in traj.steps] == [0.25, 0.25, 0.5]
    assert traj.steps[-1].done and traj.final_observation == "done"


def test_a_grounded_step_reads_back_with_the_model_s_text_beside_the_command_sent(tmp_path):
    from glider.trainer.data.logs import trajectories_from_records

    grounded = {**record(0, "hallway", "go to garden"), "generated_action": "walk to the garden", "grounded": True,
                "valid_actions": 12}
    free = record(1, "garden", "look around")
    (traj,) = trajectories_from_records([grounded, free, record(2, "end", None, done=True)])
    assert [(s.action, s.generated_action, s.grounded) for s in traj.steps] == [
        ("go to garden", "walk to the garden", True), ("look around", None, None)]


def test_a_profile_learns_from_its_own_episodes_and_old_logs_are_the_default_s():
    from glider.trainer.data.logs import trajectories_from_records

    old = [record(0, "hallway", "go to garden"), record(1, "end", None, done=True)]  # no profile field
    other = [{**r, "episode_id": "ep-2", "profile": "textworld"} for r in old]
    assert [t.id for t in trajectories_from_records(old + other, profile="default")] == ["server/ep-1"]
    assert [t.id for t in trajectories_from_records(old + other, profile="textworld")] == ["server/ep-2"]
    assert len(trajectories_from_records(old + other)) == 2
