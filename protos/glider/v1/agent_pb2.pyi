from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActRequest(_message.Message):
    __slots__ = ("observation", "episode_id", "task", "reward", "done", "step", "score", "sampling", "valid_actions", "profile")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VALID_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    observation: str
    episode_id: str
    task: str
    reward: float
    done: bool
    step: int
    score: float
    sampling: Sampling
    valid_actions: _containers.RepeatedScalarFieldContainer[str]
    profile: str
    def __init__(self, observation: _Optional[str] = ..., episode_id: _Optional[str] = ..., task: _Optional[str] = ..., reward: _Optional[float] = ..., done: _Optional[bool] = ..., step: _Optional[int] = ..., score: _Optional[float] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., valid_actions: _Optional[_Iterable[str]] = ..., profile: _Optional[str] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("episode_id", "step", "action", "subgoal", "new_subgoal", "subgoal_done", "subgoal_index", "done", "adapter_versions", "fallback", "grounded", "generated_action", "profile")
    class AdapterVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_FIELD_NUMBER: _ClassVar[int]
    NEW_SUBGOAL_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_DONE_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_INDEX_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    GROUNDED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_ACTION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    step: int
    action: str
    subgoal: str
    new_subgoal: bool
    subgoal_done: bool
    subgoal_index: int
    done: bool
    adapter_versions: _containers.ScalarMap[str, str]
    fallback: bool
    grounded: bool
    generated_action: str
    profile: str
    def __init__(self, episode_id: _Optional[str] = ..., step: _Optional[int] = ..., action: _Optional[str] = ..., subgoal: _Optional[str] = ..., new_subgoal: _Optional[bool] = ..., subgoal_done: _Optional[bool] = ..., subgoal_index: _Optional[int] = ..., done: _Optional[bool] = ..., adapter_versions: _Optional[_Mapping[str, str]] = ..., fallback: _Optional[bool] = ..., grounded: _Optional[bool] = ..., generated_action: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class EpisodeEvent(_message.Message):
    __slots__ = ("start", "step")
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    start: EpisodeStart
    step: EpisodeStep
    def __init__(self, start: _Optional[_Union[EpisodeStart, _Mapping]] = ..., step: _Optional[_Union[EpisodeStep, _Mapping]] = ...) -> None: ...

class EpisodeStart(_message.Message):
    __slots__ = ("task", "observation", "episode_id", "sampling", "valid_actions", "profile")
    TASK_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VALID_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    task: str
    observation: str
    episode_id: str
    sampling: Sampling
    valid_actions: _containers.RepeatedScalarFieldContainer[str]
    profile: str
    def __init__(self, task: _Optional[str] = ..., observation: _Optional[str] = ..., episode_id: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., valid_actions: _Optional[_Iterable[str]] = ..., profile: _Optional[str] = ...) -> None: ...

class EpisodeStep(_message.Message):
    __slots__ = ("observation", "reward", "done", "score", "valid_actions")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VALID_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    observation: str
    reward: float
    done: bool
    score: float
    valid_actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, observation: _Optional[str] = ..., reward: _Optional[float] = ..., done: _Optional[bool] = ..., score: _Optional[float] = ..., valid_actions: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateEpisodeRequest(_message.Message):
    __slots__ = ("task", "episode_id", "sampling", "profile")
    TASK_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    task: str
    episode_id: str
    sampling: Sampling
    profile: str
    def __init__(self, task: _Optional[str] = ..., episode_id: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., profile: _Optional[str] = ...) -> None: ...

class GetEpisodeRequest(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class DeleteEpisodeRequest(_message.Message):
    __slots__ = ("episode_id",)
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    def __init__(self, episode_id: _Optional[str] = ...) -> None: ...

class DeleteEpisodeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EpisodeInfo(_message.Message):
    __slots__ = ("episode_id", "task", "mode", "status", "step", "subgoal", "subgoal_count", "planner_calls", "executor_calls", "total_reward", "adapter_versions", "sampling", "profile")
    class AdapterVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_FIELD_NUMBER: _ClassVar[int]
    SUBGOAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PLANNER_CALLS_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REWARD_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    task: str
    mode: str
    status: str
    step: int
    subgoal: str
    subgoal_count: int
    planner_calls: int
    executor_calls: int
    total_reward: float
    adapter_versions: _containers.ScalarMap[str, str]
    sampling: Sampling
    profile: str
    def __init__(self, episode_id: _Optional[str] = ..., task: _Optional[str] = ..., mode: _Optional[str] = ..., status: _Optional[str] = ..., step: _Optional[int] = ..., subgoal: _Optional[str] = ..., subgoal_count: _Optional[int] = ..., planner_calls: _Optional[int] = ..., executor_calls: _Optional[int] = ..., total_reward: _Optional[float] = ..., adapter_versions: _Optional[_Mapping[str, str]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., profile: _Optional[str] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: str
    def __init__(self, profile: _Optional[str] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("name", "serving", "current", "previous", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving: str
    current: str
    previous: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., serving: _Optional[str] = ..., current: _Optional[str] = ..., previous: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters", "engine_loaded")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_LOADED_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    engine_loaded: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ..., engine_loaded: _Optional[_Iterable[str]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("name", "version", "profile")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    profile: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class RollbackAdapterRequest(_message.Message):
    __slots__ = ("name", "profile")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    profile: str
    def __init__(self, name: _Optional[str] = ..., profile: _Optional[str] = ...) -> None: ...

class AdaptersPublishedRequest(_message.Message):
    __slots__ = ("adapters", "profile")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedScalarFieldContainer[str]
    profile: str
    def __init__(self, adapters: _Optional[_Iterable[str]] = ..., profile: _Optional[str] = ...) -> None: ...

class AdaptersPublishedResponse(_message.Message):
    __slots__ = ("profile", "serving", "replicas_notified")
    class ServingEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_NOTIFIED_FIELD_NUMBER: _ClassVar[int]
    profile: str
    serving: _containers.ScalarMap[str, str]
    replicas_notified: int
    def __init__(self, profile: _Optional[str] = ..., serving: _Optional[_Mapping[str, str]] = ..., replicas_notified: _Optional[int] = ...) -> None: ...

class SwapResponse(_message.Message):
    __slots__ = ("name", "version", "previous", "changed", "seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    previous: str
    changed: bool
    seconds: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., previous: _Optional[str] = ..., changed: _Optional[bool] = ..., seconds: _Optional[float] = ...) -> None: ...
