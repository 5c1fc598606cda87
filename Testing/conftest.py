"""Root of the test folders: pytest puts this folder on ``sys.path``, so ``model_files`` imports."""
