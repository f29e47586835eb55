"""`make test-fast` runs only tests that need no service: tests/conftest.py fails a fast test that
connects to PostgreSQL or opens a socket to a service's port (even when the code swallows the
error), and refuses a fast test that asks for a service fixture."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()
MARKER = '[pytest]\nmarkers =\n    fast: needs no service\n'  # as pyproject.toml registers it


def test_a_fast_test_that_reaches_for_a_service_fails(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKER)
    pytester.makepyfile(
        test_inner="""
        import socket
        import psycopg
        import pytest

        pytestmark = pytest.mark.fast

        def test_redis_error_swallowed():
            try:
                socket.create_connection(("127.0.0.1", 6379), timeout=1)
            except OSError:
                pass

        def test_postgres():
            psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", connect_timeout=1)

        def test_another_port_is_fine():
            server = socket.socket()
            server.bind(("127.0.0.1", 0))
            server.listen()
            socket.create_connection(server.getsockname(), timeout=1).close()
            server.close()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*a fast test used a service: Redis (127.0.0.1:6379)*"])
    result.stdout.fnmatch_lines(["*a fast test may not use PostgreSQL (psycopg.connect)*"])


def test_a_fast_test_asking_for_a_service_fixture_is_refused(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKER)
    pytester.makepyfile(
        test_inner="""
        import pytest

        @pytest.mark.fast
        def test_uses_redis(redis_client):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_uses_redis is a fast test but uses*redis_client*which need a service*"])
