"""Lightning callbacks: run-directory writing, evaluation outputs, sample logging."""
