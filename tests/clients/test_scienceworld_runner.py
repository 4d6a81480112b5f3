"""The ScienceWorld runner's bound on the admissible commands it sends (no JVM: the combinations as the JVM's JSON gives them)."""

from glider.clients.envs.scienceworld import bound_commands


def combo(action: str, *objects: int) -> dict:
    return {"action": action, "template_id": 0, "obj_ids": list(objects)}


JVM_ORDER = [combo("connect a to b", 1, 2), combo("look around"), combo("pick up a", 1),
             combo("move b to a", 2, 1), combo("focus on b", 2), combo("connect b to a", 2, 1)]


def test_under_the_bound_every_command_is_sent_sorted_as_the_plain_call_returns_them():
    assert bound_commands(JVM_ORDER, 6) == sorted(c["action"] for c in JVM_ORDER)


def test_over_the_bound_two_object_commands_go_first_in_the_jvm_s_order():
    # three commands over one object or none are kept; one slot left goes to the first two-object one
    assert bound_commands(JVM_ORDER, 4) == ["connect a to b", "focus on b", "look around", "pick up a"]
    assert bound_commands(JVM_ORDER, 2) == ["look around", "pick up a"]


def test_a_command_listed_twice_counts_once_and_missing_objects_count_as_none():
    twice = [combo("pick up apple", 3), combo("pick up apple", 4), {"action": "inventory"}, combo("eat apple", 3)]
    assert bound_commands(twice, 3) == ["eat apple", "inventory", "pick up apple"]
    assert bound_commands(twice + [combo("put apple in box", 3, 5)], 3) == ["eat apple", "inventory", "pick up apple"]
