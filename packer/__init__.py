"""Service logic above the registry: package model, plugin chains, assembly, subscriptions.

Kept free of imports at package level so ``proxy.config`` can import ``packer.settings``
without pulling in the rest."""
