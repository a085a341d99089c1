"""The stale-cache lab: an ExternalIPPool validating webhook whose informer cache can lag.

See tests/stalecache/webhook.py for the API (StaleCacheWebhook). admission.py is the
machinery it runs on (TLS webhooks on 127.0.0.1 that a real API server calls), shared
with the bug doubles in tests/doubles.
"""
