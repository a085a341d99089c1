"""The marks every lab test carries: needs_root, and a skip with the reason when not root."""

import pytest

from fixtures.netns import has_netns_privileges

NEEDS_ROOT_REASON = "needs root (CAP_NET_ADMIN, CAP_NET_RAW) for network namespaces"

needs_root = [
    pytest.mark.needs_root,
    pytest.mark.skipif(not has_netns_privileges(), reason=NEEDS_ROOT_REASON),
]
