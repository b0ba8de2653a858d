"""One module per command (or family); each has `register(app)`. Commands parse options, call the
library's public functions and print; they hold no analysis logic and raise only library errors."""
