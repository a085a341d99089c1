"""The data-plane lab: a kind network in miniature, made only of network namespaces."""
