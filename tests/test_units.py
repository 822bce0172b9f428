import pytest

from lakeferry.units import ByteSize, Duration, format_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5m", 300), ("1h", 3600), ("2d", 172800), ("30", 30), (1.5, 1.5), ("0s", 0)],
)
def test_duration_parses(text: object, seconds: float) -> None:
    assert Duration.parse(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "ms", True, None, [1]])
def test_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        Duration.parse(bad)


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("20GiB", 20 * 2**30),
        ("10GB", 10 * 10**9),
        ("512MiB", 512 * 2**20),
        (1024, 1024),
        ("1.5K", 1536),
    ],
)
def test_size_parses(text: object, n: int) -> None:
    assert ByteSize.parse(text) == n


@pytest.mark.parametrize("bad", ["20 gigs", "-5", -5, "GiB", 1.5])
def test_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        ByteSize.parse(bad)


def test_format_duration_round_trips() -> None:
    for text in ("250ms", "5m", "1h", "45s"):
        assert format_duration(Duration.parse(text)) == text
