/**
 * Error classes for expected failures. Each carries a stable `code` and the exit
 * code the CLI uses; the CLI prints `message` as one line and keeps the stack for
 * `--verbose`/`DEBUG`. Anything that is not a ToolkitError is a bug and is shown in full.
 */
export class ToolkitError extends Error {
  readonly code: string;
  readonly exitCode: number;

  constructor(code: string, message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.exitCode = options.exitCode ?? 1;
  }
}

/** Bad configuration or bad user input: exit code 2, nothing was written. */
export class UsageError extends ToolkitError {
  constructor(message: string, options: { code?: string; cause?: unknown } = {}) {
    super(options.code ?? 'E_USAGE', message, { exitCode: 2, cause: options.cause });
  }
}

/** Every problem found in the configuration, reported together. */
export class ConfigError extends UsageError {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(problems.join('; '), { code: 'E_CONFIG' });
    this.problems = problems;
  }
}

/** The database server could not be reached or refused us. */
export class ConnectionError extends ToolkitError {
  constructor(message: string, cause?: unknown) {
    super('E_CONNECTION', message, { cause });
  }
}

/** The embedded database folder is already open in another process. */
export class EmbeddedLockedError extends ToolkitError {
  constructor(message: string) {
    super('E_EMBEDDED_LOCKED', message);
  }
}

/** A migration folder or file is unusable (no `up`, syntax error, duplicate, edited after apply). */
export class MigrationSourceError extends ToolkitError {
  readonly file: string | undefined;

  constructor(message: string, options: { file?: string; cause?: unknown } = {}) {
    super('E_MIGRATION_SOURCE', message, { cause: options.cause });
    this.file = options.file;
  }
}

/** `public.tenants` is missing: master migrations have not run. */
export class RegistryMissingError extends ToolkitError {
  constructor() {
    super('E_REGISTRY_MISSING', 'The tenant registry public.tenants does not exist: run `pnpm migrate:master` first');
  }
}

/** The first line of any error's message (a ToolkitError's message is one line already). */
export function messageOf(error: unknown): string {
  if (error instanceof ToolkitError) return error.message;
  if (error instanceof Error) return error.message.split('\n')[0] ?? String(error);
  return String(error);
}
