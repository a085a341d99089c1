"""The stale-cache lab: an ExternalIPPool validating webhook whose informer cache can lag.

See tests/stalecache/webhook.py for the API (StaleCacheWebhook).
"""
