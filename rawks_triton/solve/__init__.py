"""The solver layer: options and statistics, the one vector layout, the protocols a backend
implements, the certified PCG driver, the multigrid hierarchy and cycle, and the policy that
chooses a backend. Nothing here knows a particular backend; the backends build on it."""
