"""Full builds: licensed runtime images and the full package index.

``settings`` (config), ``store`` (durable build records), ``builder`` (one build),
``service`` (the queue and worker), ``freeze`` (the policy that protects built packages).
Nothing is imported here so ``proxy.config`` can import ``settings`` alone."""
