"""`python -m referral_service`: the `referral-service` command line, as the console script runs
it (`python -m referral_service serve`, `python -m referral_service db upgrade`, ...)."""

from referral_service.cli import main

if __name__ == "__main__":
    main()
