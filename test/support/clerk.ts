import { createHmac, randomBytes } from 'node:crypto';

/** A fresh Clerk webhook signing secret (`whsec_` + base64), as the dashboard shows one. */
export function webhookSecret(): string {
  return `whsec_${randomBytes(24).toString('base64')}`;
}

/** A webhook request body and headers signed with `secret` as Clerk's webhooks (Svix, Standard Webhooks) sign them. */
export function signedWebhook(payload: unknown, secret: string): { body: string; headers: Record<string, string> } {
  const body = JSON.stringify(payload);
  const id = `msg_${randomBytes(8).toString('hex')}`;
  const timestamp = String(Math.floor(Date.now() / 1000));
  const signature = createHmac('sha256', Buffer.from(secret.slice('whsec_'.length), 'base64'))
    .update(`${id}.${timestamp}.${body}`)
    .digest('base64');
  return {
    body,
    headers: {
      'content-type': 'application/json',
      'svix-id': id,
      'svix-timestamp': timestamp,
      'svix-signature': `v1,${signature}`,
    },
  };
}
