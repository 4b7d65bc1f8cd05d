import { createInterface } from 'node:readline';
import { ToolkitError, UsageError } from '../errors.ts';

/** Where a confirmation is asked: a terminal normally, streams in tests. */
export interface ConfirmIo {
  readonly input: NodeJS.ReadableStream & { isTTY?: boolean };
  readonly output: NodeJS.WritableStream & { isTTY?: boolean };
}

/** The answer did not match: nothing was done. */
export class NotConfirmedError extends ToolkitError {
  constructor(what: string) {
    super('E_NOT_CONFIRMED', `Not confirmed: ${what} was left alone`);
  }
}

/** Whether both ends are a terminal, where a person can answer. */
export function isInteractive(io: ConfirmIo): boolean {
  return io.input.isTTY === true && io.output.isTTY === true;
}

/**
 * Asks for `expected` (an org id) to be typed again before something irreversible, and throws
 * NotConfirmedError unless it is typed exactly. Off a terminal, throws a UsageError asking for
 * `--yes` instead of waiting for an answer nobody will give.
 */
export async function confirmByTyping(io: ConfirmIo, expected: string, what: string, prompt: string): Promise<void> {
  if (!isInteractive(io)) {
    throw new UsageError(`Refusing to change ${what} without confirmation: not on a terminal, so pass --yes`, {
      code: 'E_CONFIRM',
    });
  }
  await askToType(io, expected, what, prompt);
}

/** The question and the check alone (what a terminal sees), for tests over plain streams. */
export async function askToType(io: ConfirmIo, expected: string, what: string, prompt: string): Promise<void> {
  const rl = createInterface({ input: io.input, terminal: false });
  try {
    // The end of the input (Ctrl-D) is no answer.
    const answer = await new Promise<string | undefined>((resolve) => {
      rl.once('line', resolve);
      rl.once('close', () => resolve(undefined));
      io.output.write(prompt);
    });
    if (answer?.trim() !== expected) throw new NotConfirmedError(what);
  } finally {
    rl.close();
  }
}
