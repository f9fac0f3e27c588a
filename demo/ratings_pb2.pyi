from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetRatingRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    def __init__(self, product_id: _Optional[int] = ...) -> None: ...

class WatchRatingsRequest(_message.Message):
    __slots__ = ("product_id", "count", "interval_ms")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    count: int
    interval_ms: int
    def __init__(self, product_id: _Optional[int] = ..., count: _Optional[int] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class Rating(_message.Message):
    __slots__ = ("product_id", "stars", "votes", "sequence")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    product_id: int
    stars: float
    votes: int
    sequence: int
    def __init__(self, product_id: _Optional[int] = ..., stars: _Optional[float] = ..., votes: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...
