/** Pieces shared by the commands: option parsing helpers and the one-line error convention. */
import { InvalidArgumentError } from 'commander';

/** Collects repeated `--set k=v` options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** Parses an integer option ≥ min, naming the option on failure. */
export function intOption(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min)
      throw new InvalidArgumentError(`${name} must be an integer ≥ ${min}, got '${v}'`);
    return n;
  };
}

/** Parses a finite number option, naming the option on failure. */
export function numberOption(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (v.trim() === '' || !Number.isFinite(n))
      throw new InvalidArgumentError(`${name} must be a number, got '${v}'`);
    return n;
  };
}

/** A failure the user can fix: printed as one line, exit code 1. */
export class UsageError extends Error {
  override name = 'UsageError';
}
