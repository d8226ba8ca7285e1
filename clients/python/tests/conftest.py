import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import FaultProxy, Service


@pytest.fixture(scope="session")
def service():
    running = Service()
    yield running
    running.close()


@pytest.fixture
def faults(service):
    """``faults(plan)``: a fault proxy in front of the service, closed after the test."""
    proxies = []

    def make(plan):
        proxy = FaultProxy(service.port, plan)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
