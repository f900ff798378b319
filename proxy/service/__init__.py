"""Service logic below the HTTP layer: registry rules, policy and events."""
