"""The OAuth flows' own tests, run again with the sign-in state in a real Redis (REDIS_URL): pending sign-ins,
codes, throttling and registrations per address behave exactly as with the SQLite store alone.

The tests are the ones in test_oauth_endpoints, test_auth_races and test_oauth_upstream (imported here, so
pytest runs them with this module's `make_oauth`: the same app, plus REDIS_URL and the PUBLIC_BASE_URL it
needs). Left out: tests that read or backdate SQLite rows the Redis store does not keep there (codes,
registrations), and the CLI ones, whose broadcast reaches the bearer cache a moment later rather than on
the very next request (tests/test_auth_redis.py checks that within one second).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app import keys
from app.settings import Settings
from app.state.authredis import RedisAuthStorage
from tests.fixtures.auth import OAuth, build_app, create_user
from tests.fixtures.databases import free_port
from tests.test_auth_races import (  # noqa: F401 (collected here, with this module's fixtures)
    test_a_burst_of_wrong_passwords_evaluates_at_most_the_limit,
    test_a_refresh_after_the_leeway_is_reuse_and_revokes_the_family,
    test_concurrent_refreshes_within_the_leeway_all_succeed,
    test_registrations_per_address_per_hour,
    test_the_leeway_is_for_the_same_client_only,
    test_the_per_user_ceiling_slows_a_distributed_guesser_and_lets_the_user_in,
)
from tests.test_oauth_endpoints import (  # noqa: F401
    test_authorize_errors_go_back_to_the_registered_redirect,
    test_authorize_never_redirects_to_an_unchecked_uri,
    test_client_authentication_failures_are_invalid_client_401,
    test_code_exchange_issues_a_bound_jwt_and_a_refresh_token,
    test_codes_are_single_use_and_reuse_revokes_what_they_gave,
    test_deny_sends_access_denied_back,
    test_failed_sign_ins_are_throttled_per_user_and_per_address,
    test_forms_need_the_csrf_token_and_the_browser_cookie,
    test_login_and_consent_pages,
    test_loopback_redirect_may_use_another_port,
    test_public_client_with_pkce_only,
    test_reader_is_offered_read_access_only,
    test_refresh_can_narrow_but_not_widen,
    test_refresh_rotates_and_reuse_revokes_the_family,
    test_revoking_a_refresh_token_ends_the_sign_in,
    test_revoking_an_access_token,
    test_token_endpoint_accepts_json_and_client_secret_post,
    test_token_request_errors,
)
from tests.test_oauth_upstream import (  # noqa: F401
    provider,
    test_upstream_callback_needs_the_starting_browser,
    test_upstream_sign_in_leads_to_the_same_consent,
    test_upstream_sign_in_refusals,
    upstream_oauth,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def make_oauth(
    auth_settings: Callable[..., Settings], aiohttp_client: Any, tmp_path: Any, redis_url: str
) -> Callable[..., Any]:
    made = 0

    async def make(**overrides: Any) -> OAuth:
        nonlocal made
        made += 1
        port = free_port()
        settings = auth_settings(
            **{
                "data_dir": str(tmp_path / f"state{made}"),
                "redis_url": redis_url,
                "public_base_url": f"http://127.0.0.1:{port}",
                **overrides,
            }
        )
        create_user(settings, "alice", role="writer")
        create_user(settings, "rita", role="reader")
        oauth = OAuth(await aiohttp_client(build_app(settings), server_kwargs={"port": port}), settings)
        assert isinstance(oauth.http.app[keys.AUTH_STORE].store.sync, RedisAuthStorage)
        return oauth

    return make


@pytest.fixture
async def oauth(make_oauth: Callable[..., Any]) -> OAuth:
    return await make_oauth()
